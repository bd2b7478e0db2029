"""`sslbench export` and `sslbench.load_backbone`: real tiny runs exported in each format,
loaded by timm, torchvision and sslbench itself, giving the run's own features."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from conftest import TINY_RUN, needs_fmnist
from safetensors.torch import load_file

import sslbench
from sslbench.cli import main
from sslbench.config import config_hash, load_run_config
from sslbench.run.build import build_method
from sslbench.run.evaluate import load_weights
from sslbench.tools.export import backbone_weights
from sslbench.transforms import Pipeline


def _make_run(module_folder: Path, tmp_path_factory, name: str, *overrides: str) -> Path:
    """A finished tiny run, made once per module, unevaluated (export reads only config.yaml
    and last.ckpt). The conftest's cache fixture is per test (it runs after a module's
    fixtures), so the cache folder is set here the same way."""
    run_dir = module_folder / name / "run"
    run_dir.parent.mkdir()
    args = ["pretrain", *TINY_RUN, *overrides, "eval.enabled=false", f"run_dir={run_dir}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(args) == 0
    return run_dir


@pytest.fixture(scope="module")
def resnet10t_run(module_folder: Path, tmp_path_factory) -> Path:
    """SimCLR, timm's resnet10t (a deep stem: no torchvision model has it)."""
    return _make_run(module_folder, tmp_path_factory, "export-r10", "method=simclr")


@pytest.fixture(scope="module")
def small_stem_run(module_folder: Path, tmp_path_factory) -> Path:
    """BYOL (whose checkpoint also holds the momentum copy of the backbone), small stem, at
    16 px: the stride-1 stem keeps full-size feature maps, 3x the compute at 32 px."""
    return _make_run(
        module_folder,
        tmp_path_factory,
        "export-byol",
        "method=byol",
        "backbone.small_stem=true",
        "image_size=16",
    )


@pytest.fixture(scope="module")
def resnet18_run(module_folder: Path, tmp_path_factory) -> Path:
    return _make_run(
        module_folder, tmp_path_factory, "export-r18", "method=simclr", "backbone=resnet18"
    )


@pytest.fixture(scope="module")
def vit_run(module_folder: Path, tmp_path_factory) -> Path:
    """SimCLR on timm's ViT-Ti/16 made a ViT-Ti/8 for 32-px images (16 patches)."""
    return _make_run(
        module_folder, tmp_path_factory, "export-vit", "method=simclr",
        "backbone=vit_tiny_patch16_224", "backbone.patch_size=8",
    )  # fmt: skip


def _own_features(run_dir: Path, images: torch.Tensor, aspect: torch.Tensor):
    """(eval views, features) of sslbench's own backbone, built from config.yaml and
    loaded from last.ckpt as `sslbench eval` does."""
    cfg = load_run_config(run_dir / "config.yaml")
    model = build_method(cfg, "cpu")
    model.load_state_dict(load_weights(run_dir / "last.ckpt"))
    views = model.pipeline.eval_view(images, aspect)
    with torch.no_grad():
        return views, model.backbone.eval()(views)


def _features(model: torch.nn.Module, views: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(views)


def _export(run_dir: Path, *args: str) -> tuple[Path, dict]:
    assert main(["export", f"run_dir={run_dir}", *args]) == 0
    out = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("out=")), None)
    weights = out or run_dir / "backbone.safetensors"
    return weights, json.loads(weights.with_suffix(".json").read_text())


@needs_fmnist
def test_timm_format_loads_strictly_into_timm_with_the_runs_features(
    resnet10t_run, fmnist_batch, capsys
) -> None:
    images, aspect, _ = fmnist_batch
    weights, info = _export(resnet10t_run)
    assert capsys.readouterr().out.split() == [str(weights), str(weights.with_suffix(".json"))]
    model = timm.create_model("resnet10t", num_classes=0)
    result = model.load_state_dict(load_file(weights), strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    views, own = _own_features(resnet10t_run, images[:16], aspect[:16])
    torch.testing.assert_close(_features(model, views), own, atol=1e-5, rtol=0)

    # The JSON rebuilds the input as well as the network: the centred square at image_size
    # in [0, 1], then (x - mean) / std, is exactly the run's evaluation view.
    cfg = load_run_config(resnet10t_run / "config.yaml")
    assert info | {"run_dir": None} == {
        "format": "timm", "weights": "backbone.safetensors", "timm_name": "resnet10t",
        "num_classes": 0, "timm_kwargs": {}, "small_stem": False, "zero_init_last": False,
        "torchvision_name": None, "num_features": 512, "image_size": 32,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "method": "simclr",
        "transform": "simclr", "dataset": "fashion-mnist", "epochs": 1, "seed": 0,
        "config_hash": config_hash(cfg), "run_dir": None,
        "sslbench_version": sslbench.__version__,
    }  # fmt: skip
    assert info["run_dir"] == str(resnet10t_run.resolve())
    plain = Pipeline({}, info["image_size"]).eval_view(images[:16], aspect[:16])
    mean, std = (torch.tensor(info[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close((plain - mean) / std, views, atol=1e-6, rtol=0)

    # sslbench.load_backbone reads the same file (and the JSON inside it, when the one
    # beside it is gone).
    loaded = sslbench.load_backbone(weights)
    assert not loaded.training
    assert loaded.pretrained_cfg["mean"] == tuple(info["mean"])
    assert loaded.pretrained_cfg["input_size"] == (3, 32, 32)
    torch.testing.assert_close(_features(loaded, views), own, atol=1e-5, rtol=0)
    weights.with_suffix(".json").unlink()
    torch.testing.assert_close(
        _features(sslbench.load_backbone(weights), views), own, atol=1e-5, rtol=0
    )
    assert not list(resnet10t_run.glob("*.tmp"))  # pathlib's * matches the hidden temp files too


@needs_fmnist
def test_a_small_stem_byol_backbone_round_trips_through_load_backbone(
    small_stem_run, fmnist_batch, tmp_path
) -> None:
    images, aspect, _ = fmnist_batch
    out = tmp_path / "exported" / "byol.safetensors"  # a folder that does not exist yet
    weights, info = _export(small_stem_run, "format=safetensors", f"out={out}")
    assert weights == out and (info["format"], info["small_stem"]) == ("safetensors", True)
    assert info["weights"] == "byol.safetensors" and info["method"] == "byol"
    assert info["image_size"] == 16

    views, own = _own_features(small_stem_run, images[:16], aspect[:16])
    model = sslbench.load_backbone(out)
    assert isinstance(model.maxpool, torch.nn.Identity) and model.conv1.stride == (1, 1)
    torch.testing.assert_close(_features(model, views), own, atol=1e-5, rtol=0)
    # The online backbone, the one evaluated: not BYOL's momentum copy, which differs
    # from it after two steps (momentum 0.99).
    state = load_weights(small_stem_run / "last.ckpt")
    exported = load_file(out)
    assert set(exported) == {k[len("backbone.") :] for k in state if k.startswith("backbone.")}
    target = state["backbone_target.conv1.weight"]
    assert torch.equal(exported["conv1.weight"], state["backbone.conv1.weight"])
    assert not torch.equal(exported["conv1.weight"], target)


@needs_fmnist
@needs_fmnist
def test_a_vit_loads_strictly_into_timm_built_with_the_jsons_size_arguments(
    vit_run, fmnist_batch
) -> None:
    images, aspect, _ = fmnist_batch
    weights, info = _export(vit_run)
    assert info["timm_kwargs"] == {"img_size": 32, "patch_size": 8}
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **info["timm_kwargs"])
    result = model.load_state_dict(load_file(weights), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert model.pos_embed.shape == (1, 1 + 4 * 4, 192)  # the class token and 4x4 patches
    views, own = _own_features(vit_run, images[:8], aspect[:8])
    torch.testing.assert_close(_features(model, views), own, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        _features(sslbench.load_backbone(weights), views), own, atol=1e-5, rtol=0
    )


@needs_fmnist
@pytest.mark.parametrize("kwargs", [{"img_size": "32"}, {"img_size": -1}, {"depth": 2}, [32]])
def test_an_exports_size_arguments_are_checked_before_timm_gets_them(
    vit_run, tmp_path, kwargs
) -> None:
    """The JSON beside a downloaded export is someone else's: only img_size and patch_size,
    as positive integers, reach timm.create_model."""
    weights, info = _export(vit_run, f"out={tmp_path / 'vit.safetensors'}")
    weights.with_suffix(".json").write_text(json.dumps(info | {"timm_kwargs": kwargs}))
    with pytest.raises(ValueError, match="timm_kwargs must map img_size and patch_size"):
        sslbench.load_backbone(weights)


def test_a_channels_last_checkpoint_is_exported_contiguous(resnet10t_run, tmp_path) -> None:
    """A GPU run (backbone.channels_last=true, the default) saves its convolution weights
    channels-last, which safetensors refuses as they are: made here on the CPU."""
    run = tmp_path / "gpu-run"
    run.mkdir()
    shutil.copy(resnet10t_run / "config.yaml", run)
    checkpoint = torch.load(resnet10t_run / "last.ckpt", map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    for key, value in state.items():
        if value.dim() == 4:
            state[key] = value.to(memory_format=torch.channels_last)
    assert not state["backbone.conv1.0.weight"].is_contiguous()
    torch.save(checkpoint, run / "last.ckpt")
    weights, _ = _export(run)
    exported = load_file(weights)
    assert all(torch.equal(exported[k[len("backbone.") :]], v)
               for k, v in state.items() if k.startswith("backbone."))  # fmt: skip


def test_the_backbone_prefix_leaves_out_momentum_copies_and_heads() -> None:
    one = torch.ones(1)
    state = {"backbone.fc.w": one, "backbone_target.fc.w": 2 * one, "projection_head.w": one}
    assert backbone_weights(state) == {"fc.w": one}


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "resnet101"]
)
def test_timm_and_torchvision_resnets_share_key_names_and_shapes(name) -> None:
    """What format=torchvision relies on (export checks it again on every export)."""
    with torch.device("meta"):
        ours = timm.create_model(name, num_classes=0).state_dict()
        theirs = torchvision.models.get_model(name).state_dict()
    assert set(theirs) - set(ours) == {"fc.weight", "fc.bias"} and set(ours) <= set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@needs_fmnist
def test_an_exported_resnet18_loads_strictly_into_torchvision_and_timm(
    resnet18_run, fmnist_batch, tmp_path
) -> None:
    images, aspect, _ = fmnist_batch
    weights, info = _export(
        resnet18_run, "format=torchvision", f"out={tmp_path / 'r18.safetensors'}"
    )
    assert (info["torchvision_name"], info["timm_name"]) == ("resnet18", "resnet18")
    model = torchvision.models.resnet18()
    result = model.load_state_dict(load_file(weights), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    model.fc = torch.nn.Identity()

    views, own = _own_features(resnet18_run, images[:16], aspect[:16])
    torch.testing.assert_close(_features(model, views), own, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        _features(sslbench.load_backbone(weights), views), own, atol=1e-5, rtol=0
    )

    # the same ResNet-18 in timm's format: a strict load into timm's own model
    weights, _ = _export(resnet18_run, f"out={tmp_path / 'r18-timm.safetensors'}")
    in_timm = timm.create_model("resnet18", num_classes=0)
    in_timm.load_state_dict(load_file(weights), strict=True)
    torch.testing.assert_close(_features(in_timm, views), own, atol=1e-5, rtol=0)


# Refusals: one line, exit 2 for a request that cannot be met, 1 for a run folder whose
# files disagree; none leaves a file behind.


@needs_fmnist
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["format=onnx"], "unknown format 'onnx'; valid: timm, torchvision, safetensors"),
        (["format=torchvision"], "format=torchvision is for the ResNets torchvision has"),
        (["out=backbone.pt"], "out must be a .safetensors file name"),
        (["epochs=2"], "'epochs=2': export takes run_dir=DIR, format="),
    ],
)
def test_a_request_the_run_cannot_meet_is_refused(
    resnet10t_run, tmp_path, capsys, args, message
) -> None:
    out = tmp_path / "x.safetensors"
    own = [a for a in args if a.startswith("out=")] or [f"out={out}"]
    other = [a for a in args if not a.startswith("out=")]
    assert main(["export", f"run_dir={resnet10t_run}", *other, *own]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@needs_fmnist
@pytest.mark.parametrize("fmt", ["timm", "torchvision"])
def test_a_small_stem_is_refused_where_timm_or_torchvision_cannot_build_it(
    small_stem_run, tmp_path, capsys, fmt
) -> None:
    out = tmp_path / "x.safetensors"
    assert main(["export", f"run_dir={small_stem_run}", f"format={fmt}", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "backbone.small_stem=true" in err and err.count("\n") == 1
    assert "use format=safetensors and load it with sslbench.load_backbone(path)" in err
    assert not list(tmp_path.iterdir())


def test_a_folder_that_is_not_a_finished_run_is_refused(tmp_path, capsys) -> None:
    assert main(["export"]) == 2
    assert "export needs run_dir=DIR" in capsys.readouterr().err
    assert main(["export", f"run_dir={tmp_path}"]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    assert main(["export", f"run_dir={tmp_path}"]) == 2
    assert "has no last.ckpt" in capsys.readouterr().err
    assert not (tmp_path / "backbone.safetensors").exists()


@needs_fmnist
def test_a_checkpoint_from_another_backbone_is_named(resnet10t_run, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(resnet10t_run / "last.ckpt", other)
    config = (resnet10t_run / "config.yaml").read_text()
    assert "name: resnet10t" in config
    (other / "config.yaml").write_text(config.replace("name: resnet10t", "name: resnet18"))
    assert main(["export", f"run_dir={other}"]) == 1
    err = capsys.readouterr().err
    assert "last.ckpt was not written by" in err and err.count("\n") == 1
    assert not (other / "backbone.safetensors").exists()


def test_importing_sslbench_and_its_export_module_leaves_torch_unloaded() -> None:
    code = "import sys, sslbench, sslbench.tools.export; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
