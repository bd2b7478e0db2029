"""Pretext tasks (LoRot's rotation head, DCL's adversarial and construction heads) on top of
the SSL methods: the labels the heads learn from, the features they see, the loss they add,
and runs through the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, method_names, needs_fmnist, small_method
from safetensors.torch import load_file

import sslbench
from sslbench.cli import main
from sslbench.config import compose
from sslbench.errors import ConfigError
from sslbench.methods import method_class
from sslbench.pretext.base import FeatureTap, class_balanced_mean
from sslbench.pretext.dcl import patch_positions, unshuffle
from sslbench.tools.export import export_run
from sslbench.transforms import Pipeline, make_generator, rotate_region


def _views_with_and_without(op: str, size: int, batch, *overrides: str):
    """One view of each image by a packaged pipeline, and by the same pipeline without
    ``op``, from the same random stream (ViewBatch, ViewBatch)."""
    from omegaconf import OmegaConf

    cfg = compose([f"image_size={size}", *overrides])
    ops = OmegaConf.to_container(cfg.transform, resolve=True)["ops"]
    images, aspect, _ = batch
    made = [
        Pipeline(spec, size).views(images, aspect, make_generator(0, "cpu"))
        for spec in (ops, {entry: params for entry, params in ops.items() if entry != op})
    ]
    return made[0], made[1]


@pytest.mark.parametrize("transform", ["dcl", "baseline_dcl"])
def test_undoing_the_permutation_gives_the_view_without_the_shuffle(transform, fmnist_batch):
    """DCL's original view: the shuffled view with its permutation undone is, pixel for
    pixel, the view the same pipeline makes without region confusion (the shuffle is the
    last op before normalize, so every earlier random draw is the same)."""
    shuffled, plain = _views_with_and_without(
        "region_confusion", 28, fmnist_batch, f"transform={transform}"
    )
    permutation = shuffled.labels["region_confusion"]
    assert (permutation != torch.arange(49)).any(dim=1).all()  # p=1: every view shuffled
    assert not torch.equal(shuffled.images, plain.images)
    torch.testing.assert_close(unshuffle(shuffled.images, permutation, 7), plain.images)


@pytest.mark.parametrize("variant", ["I", "E"])
def test_rotating_the_region_back_by_the_label_gives_the_view_without_lorot(variant, fmnist_batch):
    """The labels that reach LoRot's head say what the op did: with LoRot-E (the quadrant is
    in the label) turning that quadrant back by k restores the view made without the op;
    with LoRot-I, label 0 leaves the view as it was and any other label changed it."""
    turned, plain = _views_with_and_without(
        "lorot", 32, fmnist_batch, "transform=lorot", f"transform.ops.lorot.variant={variant}"
    )
    labels = turned.labels["lorot"]
    n = labels.shape[0]
    if variant == "E":
        assert labels.max() < 16
        quadrant, k = labels // 4, labels % 4
        top, left = (quadrant // 2) * 16, (quadrant % 2) * 16
        back = rotate_region(turned.images, top, left, torch.full((n,), 16), (4 - k) % 4)
        torch.testing.assert_close(back, plain.images)
    else:
        assert labels.max() < 4
        same = (turned.images == plain.images).flatten(1).all(dim=1)
        assert same[labels == 0].all()
        assert (labels > 0).any() and (labels == 0).any()


def test_patch_positions_of_the_identity_are_the_cell_centres() -> None:
    positions = patch_positions(torch.arange(4).unsqueeze(0), 2)
    expected = torch.tensor([[[-0.5, -0.5, 0.5, 0.5], [-0.5, 0.5, -0.5, 0.5]]])
    torch.testing.assert_close(positions, expected)


def test_class_balanced_mean_weighs_each_class_equally() -> None:
    values = torch.tensor([1.0, 1.0, 1.0, 0.0])
    classes = torch.tensor([1, 1, 1, 0])
    assert float(class_balanced_mean(values, classes, 2)) == pytest.approx(0.5)
    assert float(class_balanced_mean(values[:3], classes[:3], 2)) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["simclr", "swav", "vicregl"])
@pytest.mark.parametrize("joint", ["false", "true"])
@pytest.mark.parametrize("pretext", ["lorot", "dcl"])
def test_heads_see_every_labelled_view_with_its_feature_map(
    method, joint, pretext, fmnist_batch
) -> None:
    """Global and local views reach the heads with their own labels and the feature map the
    method's forward pass made of them (one backbone pass per view or per joint group: no
    extra pass but DCL's unshuffled view)."""
    torch.manual_seed(0)
    model, _ = small_method(
        method, f"transform={pretext}", f"pretext={pretext}", f"method.joint_forward={joint}"
    )
    model.train()
    images, aspect, _ = fmnist_batch
    views = model.make_views(images[:16], aspect[:16])
    tap = FeatureTap()
    model._tap = tap
    calls = []
    forward_features = model.backbone.forward_features
    model.backbone.forward_features = lambda x: calls.append(x.shape[0]) or forward_features(x)
    model.training_loss(views)
    inputs = model.pretext_inputs(views, tap)
    model._tap = None
    local = 2 if method in ("swav", "vicregl") else 0
    assert len(inputs.views) == 2 + local
    assert len(calls) == (1 + (local > 0) if joint == "true" else 2 + local)  # none added
    op = "lorot" if pretext == "lorot" else "region_confusion"
    expected = [v[op] for v in views.global_labels + views.local_labels]
    assert all(a is b for a, b in zip(inputs.labels, expected, strict=True))
    for view, fmap in zip(inputs.views, inputs.feature_maps, strict=True):
        assert fmap.shape[0] == view.shape[0] and fmap.ndim == 4
    if joint == "false":  # each view's own pass: its feature map is that pass's output
        model.backbone.forward_features = forward_features
        torch.testing.assert_close(
            inputs.feature_maps[0], model.backbone.forward_features(inputs.views[0])
        )
    loss, metrics = model.pretext(inputs)
    assert torch.isfinite(loss) and 0.0 <= float(metrics["accuracy"]) <= 1.0
    loss.backward()
    first = next(model.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0  # the loss reaches the backbone


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pretext=lorot"], "transform 'simclr' does not have; use transform=lorot or"),
        (["pretext=dcl", "transform=lorot"], "use transform=dcl or baseline_dcl"),
        (["pretext=lorot", "transform=lorot", "transform.ops.lorot.variant=X"], "variant"),
        (["pretext=nope"], "unknown pretext 'nope'; valid: dcl, lorot, none"),
        (["pretext.weight=0.5"], "unknown key 'pretext.weight'; valid keys under pretext: name"),
    ],
)
def test_a_pretext_its_transform_cannot_serve_is_one_clear_error(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        compose(overrides)
    assert "\n" not in str(err.value)


def test_an_op_that_moves_pixels_after_the_labelled_op_is_refused(tmp_path) -> None:
    mine = tmp_path / "late_flip.yaml"
    mine.write_text(
        "ops:\n  resized_crop: {scale: [0.2, 1.0]}\n  region_confusion: {grid: 4}\n"
        "  hflip: {p: 0.5}\n"
    )
    with pytest.raises(ConfigError, match=r"transform.ops.hflip runs after the region_confusion"):
        compose([f"transform={mine}", "pretext=dcl"])
    compose([f"transform={mine}"])  # as a plain augmentation it is fine


def test_a_run_without_pretext_keeps_its_folder_name_and_hash() -> None:
    """pretext=none leaves the config hash as it was before pretext tasks existed (the
    value below is that of the code before them), so existing run folders are found."""
    assert compose([]).run_dir.endswith("simclr-simclr-fashion-mnist-resnet18-7ec981f34e")
    named = compose(["transform=lorot", "pretext=lorot"]).run_dir
    assert "simclr-lorot-pretext_lorot-fashion-mnist-resnet18-" in named


def _epoch_losses(run_dir: Path, key: str = "train_loss_epoch") -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def _parameters(run_dir: Path, buffers: bool) -> dict[str, torch.Tensor]:
    """The trained state of the method (not its pretext heads); batch norm's running
    statistics only with ``buffers``."""
    state = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    return {
        k: v
        for k, v in state["state_dict"].items()
        if not k.startswith("pretext.") and (buffers or not k.endswith(statistics))
    }


@needs_fmnist
@pytest.mark.parametrize("pretext", ["lorot", "dcl"])
def test_weight_zero_gives_the_methods_loss_and_weights(pretext, tmp_path) -> None:
    """pretext.weight=0: the loss is the method's, step for step, and the trained weights are
    those of pretext=none (the heads' own initial weights are drawn aside). DCL's extra pass of
    the unshuffled view still updates batch norm's running statistics, so those may differ."""
    common = [*TINY_RUN, "epochs=2", "eval.enabled=false", f"transform={pretext}"]
    plain, zero = tmp_path / "none", tmp_path / "zero"
    assert main(["pretrain", *common, f"run_dir={plain}"]) == 0
    assert (
        main(["pretrain", *common, f"pretext={pretext}", "pretext.weight=0", f"run_dir={zero}"])
        == 0
    )
    assert _epoch_losses(zero) == _epoch_losses(plain)
    assert _epoch_losses(zero, "method_loss") == _epoch_losses(plain)
    ours, theirs = _parameters(zero, pretext == "lorot"), _parameters(plain, pretext == "lorot")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)


def _method_pretext_pairs() -> list:
    """SimCLR with each task in the fast suite; every other method with one task, the two
    taking turns down the registry (slow): each method meets a task, each task many methods."""
    pairs = [("simclr", "lorot"), ("simclr", "dcl")]
    others = [name for name in method_names() if name != "simclr"]
    for i, name in enumerate(others):
        pairs.append(pytest.param(name, ("lorot", "dcl")[i % 2], marks=pytest.mark.slow))
    return pairs


@needs_fmnist
@pytest.mark.parametrize(("method", "pretext"), _method_pretext_pairs())
def test_every_method_runs_with_a_pretext_task_an_online_probe_and_export(
    method, pretext, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    small = method_class(method).small_overrides
    args = [f"method={method}", f"transform={pretext}", f"pretext={pretext}", *small]
    assert main(["pretrain", *TINY_RUN, *args, f"run_dir={run_dir}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["pretext"] == pretext
    assert 0.0 <= results["pretext_accuracy"] <= 1.0
    metrics = results["pretext_metrics"]
    assert metrics["accuracy"] == results["pretext_accuracy"]
    expected = {"accuracy", "loss"} | (
        {"adversarial_loss", "construction_loss", "position_error"} if pretext == "dcl" else set()
    )
    assert set(metrics) == expected
    assert "chance" in results["pretext_task"]
    assert len(_epoch_losses(run_dir, "pretext_accuracy")) == 1  # logged per epoch
    # The same run, every method: the online probe (eval.online_probe, on by default) trained
    # beside it, and its export is the online backbone, whole (not a momentum copy's).
    assert len(_epoch_losses(run_dir, "online_probe_train_acc")) == 1
    weights = export_run(run_dir, "safetensors")[0]  # any stem (VICRegL's test: the small one)
    exported = load_file(weights)
    state = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    online = {k.removeprefix("backbone."): v for k, v in state["state_dict"].items()
              if k.startswith("backbone.")}  # fmt: skip
    assert exported.keys() == online.keys()
    assert all(torch.equal(exported[k], online[k]) for k in online)
    loaded = sslbench.load_backbone(weights).state_dict()  # builds and loads it strictly
    assert all(torch.equal(loaded[k], online[k]) for k in online)


@needs_fmnist
@pytest.mark.slow
def test_lorot_head_learns_while_the_method_loss_falls(tmp_path) -> None:
    """A short real run (CPU, about a minute): the rotation head's accuracy climbs above
    chance (0.25) while SimCLR's own loss still falls. Regions of 12-24 px of the 32-px
    views and weight 1, so that the rotation is visible and learnt within a few epochs."""
    run_dir = tmp_path / "run"
    args = [
        "method=simclr", "transform=lorot", "pretext=lorot", "pretext.weight=1.0",
        "transform.ops.lorot.min_side=12", "transform.ops.lorot.max_fraction=0.75",
        "dataset=fashion-mnist", "backbone=resnet10t", "image_size=32", "dataset.max_train=768",
        "batch_size=64", "epochs=4", "eval.enabled=false", "progress_bar=false",
    ]  # fmt: skip
    assert main(["pretrain", *args, f"run_dir={run_dir}"]) == 0
    accuracy = _epoch_losses(run_dir, "pretext_accuracy")
    method_loss = _epoch_losses(run_dir, "method_loss")
    assert len(accuracy) == 4
    assert accuracy[-1] > 0.3 and accuracy[-1] > accuracy[0]
    assert method_loss[-1] < method_loss[0]


def test_a_config_saved_before_pretext_tasks_loads_as_none(tmp_path) -> None:
    from omegaconf import OmegaConf

    from sslbench.config import load_run_config
    from sslbench.pretext import pretext_name

    cfg = compose(["transform=lorot"])
    saved = OmegaConf.to_container(cfg)
    del saved["pretext"]
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    loaded = load_run_config(path, ["run_dir=null"])
    assert pretext_name(loaded.pretext) is None
    assert loaded.run_dir == cfg.run_dir  # the same hash, so the same folder


@needs_fmnist
def test_a_pretext_run_evaluates_again_from_its_checkpoint(tmp_path) -> None:
    """`sslbench eval` rebuilds the model with its pretext heads, so the checkpoint loads."""
    run_dir = tmp_path / "run"
    args = ["transform=dcl", "pretext=dcl", f"run_dir={run_dir}"]
    assert main(["pretrain", *TINY_RUN, *args]) == 0
    first = json.loads((run_dir / "results.json").read_text())["linear_top1"]
    assert main(["eval", f"run_dir={run_dir}", "progress_bar=false"]) == 0
    again = json.loads((run_dir / "results.json").read_text())
    assert again["linear_top1"] == pytest.approx(first, abs=1e-6)


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
@pytest.mark.parametrize(("transform", "pretext"), [("lorot", "lorot"), ("dcl", "dcl")])
def test_a_pretext_head_learns_from_a_vits_patch_tokens_laid_out_as_a_map(
    transform: str, pretext: str
) -> None:
    from sslbench.nn.backbones import spatial_map

    method, _ = small_method(
        "simclr", "backbone=vit_tiny_patch16_224", "backbone.patch_size=8",
        f"transform={transform}", f"pretext={pretext}",
    )  # fmt: skip
    tokens = method.backbone.forward_features(torch.zeros(2, 3, 32, 32))
    assert tokens.shape == (2, 17, 192)  # class token + 4 x 4 patches
    assert spatial_map(method.backbone, tokens).shape == (2, 192, 4, 4)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    loss = method.loss_of_views(method.make_views(images, torch.ones(8)))
    loss.backward()
    head = next(method.pretext.parameters())
    assert torch.isfinite(loss) and head.grad is not None and head.grad.abs().sum() > 0
