"""Configuration: override validation (one-line errors, before torch), composition, the
saved config, and the command line's handling of bad input. All in-process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from sslbench.cli import main
from sslbench.config import compose, group_options, load_run_config
from sslbench.errors import ConfigError


def test_defaults_compose_and_resolve() -> None:
    cfg = compose([])
    assert cfg.method.name == "simclr"
    assert cfg.transform.name == "simclr"
    assert cfg.dataset.name == "fashion-mnist"
    assert cfg.backbone.name == "resnet18"
    assert cfg.image_size == cfg.dataset.default_image_size  # derived when not set
    assert cfg.run_dir.startswith("runs/simclr-simclr-fashion-mnist-resnet18-")


def test_contract_override_keys_exist() -> None:
    cfg = compose(
        [
            "method=simclr", "transform=simclr", "dataset=fashion-mnist", "backbone=resnet10t",
            "epochs=3", "batch_size=64", "image_size=28", "seed=7", "device=cpu", "devices=1",
            "run_dir=/tmp/somewhere", "dataset.max_train=100", "dataset.max_test=50",
            "method.temperature=0.2", "transform.ops.color_jitter.p=0.5",
        ]
    )  # fmt: skip
    assert (cfg.epochs, cfg.batch_size, cfg.image_size, cfg.seed) == (3, 64, 28, 7)
    assert cfg.backbone.name == "resnet10t"
    assert (cfg.dataset.max_train, cfg.dataset.max_test) == (100, 50)
    assert cfg.method.temperature == 0.2
    assert cfg.transform.ops.color_jitter.p == 0.5
    assert cfg.run_dir == "/tmp/somewhere"


@pytest.mark.parametrize("value", ["32", "32-true", "bf16-mixed", "16"])
def test_precision_takes_lightnings_names_and_numbers(value: str) -> None:
    # precision=32 reaches the schema as the int 32; it must compose as Lightning's "32".
    assert compose([f"precision={value}"]).precision == value


@pytest.mark.parametrize(
    ("override", "must_name"),
    [
        ("method=nope", ["'nope'", "simclr"]),
        ("transform=nope", ["'nope'", "simclr"]),
        ("dataset=nope", ["'nope'", "fashion-mnist", "folder"]),
        ("method.temprature=1", ["method.temprature", "temperature"]),
        ("epochz=3", ["epochz", "epochs", "batch_size"]),
        ("epochs=abc", ["epochs", "int", "abc"]),
        ("dataset.max_train=1.5", ["dataset.max_train", "1.5"]),
        ("method.temperature=hot", ["method.temperature", "float", "hot"]),
        ("backbone.small_stem=maybe", ["backbone.small_stem", "bool"]),
        ("transform.ops.color_jitter.strength=1", ["strength", "brightness", "hue"]),
        ("transform.ops.blurr.p=1", ["blurr", "gaussian_blur"]),
        ("epochs", ["key=value"]),
        ("epochs=1,2", ["sweep", "-m"]),
        ("device=tpu", ["tpu", "cuda"]),
        ("precision=fp8", ["precision", "fp8", "32-true", "bf16-mixed"]),
        ("epochs=0", ["epochs", "at least 1"]),
        ("resume=maybe", ["resume", "maybe", "auto", "never"]),
        ("checkpoint_every_n_steps=0", ["checkpoint_every_n_steps", "at least 1"]),
    ],
)
def test_bad_overrides_fail_in_one_line(override: str, must_name: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    assert "\n" not in message
    for text in must_name:
        assert text in message


def test_unknown_timm_backbone_becomes_a_name_override() -> None:
    cfg = compose(["backbone=vit_tiny_patch16_224"])
    assert cfg.backbone.name == "vit_tiny_patch16_224"


def test_folder_dataset_requires_a_path() -> None:
    with pytest.raises(ConfigError, match="dataset.path"):
        compose(["dataset=folder"])


def test_run_dir_hash_follows_the_config() -> None:
    assert compose(["epochs=1"]).run_dir == compose(["epochs=1"]).run_dir
    assert compose(["epochs=1"]).run_dir != compose(["epochs=2"]).run_dir


def test_saved_config_reloads_identically(tmp_path) -> None:
    cfg = compose(["epochs=2", "method.temperature=0.3", f"run_dir={tmp_path}"])
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(cfg))
    again = load_run_config(path)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    changed = load_run_config(path, ["epochs=5"])
    assert changed.epochs == 5 and changed.method.temperature == 0.3
    with pytest.raises(ConfigError, match="already chose"):
        load_run_config(path, ["method=simclr"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_run_config(path, ["method.nope=1"])


def test_a_config_saved_before_changed_defaults_repeats_its_own_run(tmp_path) -> None:
    """A config.yaml written before version 2 lacks the keys whose defaults changed: it is
    loaded with the values it ran with, not today's defaults."""
    cfg = compose(["dataset=imagenette2-160", "seed=3", "method=byol", f"run_dir={tmp_path}"])
    old = OmegaConf.to_container(cfg)
    for section, key in (("backbone", "zero_init_last"), ("method", "joint_forward"),
                         ("eval", "subset_seed"), (None, "config_version")):  # fmt: skip
        (old[section] if section else old).pop(key)
    old["dataset"]["cache_size"] = None
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    loaded = load_run_config(path)
    assert loaded.backbone.zero_init_last is True  # timm's start
    assert loaded.method.joint_forward is True  # both views in one batch
    assert loaded.eval.subset_seed == 3  # the run's own seed
    assert loaded.dataset.cache_size == 128  # image_size (128), at most the 160 of the copy
    assert loaded.config_version == 2
    # Today's config keeps today's defaults.
    current = tmp_path / "current.yaml"
    current.write_text(OmegaConf.to_yaml(cfg))
    again = load_run_config(current)
    assert not again.backbone.zero_init_last and not again.method.joint_forward
    assert again.eval.subset_seed == 0 and again.dataset.cache_size is None


def test_every_group_has_options() -> None:
    for group in ("method", "transform", "dataset", "backbone", "experiment"):
        assert group_options(group), group


def test_cli_unknown_method_exits_nonzero_naming_valid(capsys) -> None:
    assert main(["pretrain", "method=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "'nope'" in err and "simclr" in err


def test_cli_help_lists_commands(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "pretrain", "eval", "datasets"):
        assert command in out


def test_cli_eval_needs_a_run_dir(capsys, tmp_path) -> None:
    assert main(["eval"]) == 2
    assert "run_dir" in capsys.readouterr().err
    assert main(["eval", f"run_dir={tmp_path}"]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_validation_does_not_import_torch() -> None:
    # In a fresh interpreter: a bad override must fail before torch is imported.
    code = (
        "import sys\n"
        "from sslbench.cli import main\n"
        "rc = main(['pretrain', 'method=nope'])\n"
        "assert rc == 2, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_every_method_yaml_is_complete_and_registered() -> None:
    from dataclasses import fields

    from omegaconf import OmegaConf

    from sslbench.config import conf_dir
    from sslbench.config.schema import OptimizerConfig
    from sslbench.methods import METHODS

    assert set(group_options("method")) == set(METHODS)
    optimizer_keys = {f.name for f in fields(OptimizerConfig)}
    for name in group_options("method"):
        method = OmegaConf.load(conf_dir() / "method" / f"{name}.yaml")
        assert method.name == name
        # Every optimiser key is in the YAML but those added since the ResNet methods (the
        # ViT recipes' keys): a YAML from before them keeps its runs' hashes, and the
        # command line sets them all the same (test_vit_recipes.py).
        assert set(method.optimizer) <= optimizer_keys, name
        assert optimizer_keys - set(method.optimizer) <= set(VIT_RECIPE_KEYS), name
        # Keys the shared base reads, so that every method takes them from the command line.
        assert isinstance(method.joint_forward, bool), name


#: Optimiser keys of the ViT recipes, which the YAMLs from before them leave at default.
VIT_RECIPE_KEYS = ("weight_decay_end", "grad_clip", "grad_clip_mode", "betas")


def test_unknown_method_names_all_seven(capsys) -> None:
    assert main(["pretrain", "method=nope"]) == 2
    err = capsys.readouterr().err
    for name in ("simclr", "simsiam", "swav", "byol", "barlowtwins", "vicreg", "vicregl"):
        assert name in err


def test_an_op_parameter_left_at_its_default_can_be_set() -> None:
    """transform.ops.OP.PARAM for a parameter the pipeline's YAML leaves out: validated
    against the op's parameters and set (Hydra's struct config used to refuse it)."""
    cfg = compose(["transform=baseline", "transform.ops.gaussian_blur.kernel_fraction=0.2"])
    assert cfg.transform.ops.gaussian_blur.kernel_fraction == 0.2
    with pytest.raises(ConfigError, match="unknown parameter 'kernel_size' of op gaussian_blur"):
        compose(["transform=baseline", "transform.ops.gaussian_blur.kernel_size=3"])


def test_compositions_are_cached_but_never_shared() -> None:
    """A grid composes many runs from a few group choices: each gets its own config."""
    first = compose(["method=byol", "epochs=3"])
    second = compose(["method=byol", "epochs=4"])
    assert (first.epochs, second.epochs) == (3, 4)
    assert first.run_dir != second.run_dir


def test_an_edited_experiment_file_composes_anew(tmp_path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("# @package _global_\nepochs: 3\n")
    assert compose([f"experiment={mine}"]).epochs == 3  # keys of the whole config
    mine.write_text("# @package _global_\nepochs: 5\n")
    assert compose([f"experiment={mine}"]).epochs == 5
