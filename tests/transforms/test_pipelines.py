"""The study's pipelines as YAML: what they contain, that every method trains with every
one, and that a new pipeline needs only a YAML file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, needs_fmnist
from omegaconf import OmegaConf

from sslbench.cli import main
from sslbench.config import compose, group_options
from sslbench.errors import ConfigError
from sslbench.transforms import make_generator, view_pipelines

STUDY_PIPELINES = ["baseline", "simclr", "orthogonality", "lorot", "dcl"]
ALL_PIPELINES = [*STUDY_PIPELINES, "baseline_lorot", "baseline_dcl", "byol"]
PRETEXT_LABELS = {
    "lorot": {"lorot"},
    "baseline_lorot": {"lorot"},
    "dcl": {"region_confusion"},
    "baseline_dcl": {"region_confusion"},
}


def _pipelines(name: str, size: int = 32):
    cfg = compose([f"transform={name}"])
    return view_pipelines(OmegaConf.to_container(cfg.transform, resolve=True), size)


def _ops(name: str) -> dict[str, object]:
    (pipeline,) = _pipelines(name)
    return {op: params for _, op, params in pipeline.spec}


def test_every_study_pipeline_is_packaged() -> None:
    assert set(ALL_PIPELINES) <= set(group_options("transform"))


def test_pipelines_hold_the_published_parameters() -> None:
    base = _ops("baseline")  # lightly's ImageCollateFunction
    assert base["resized_crop"].scale == [0.15, 1.0]
    jitter = base["color_jitter"]
    assert (jitter.p, jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
        0.8, 0.7, 0.7, 0.7, 0.2,
    )  # fmt: skip
    assert base["grayscale"].p == 0.2 and base["gaussian_blur"].p == 0.5
    assert base["hflip"].p == 0.5 and "rotate90" in base
    assert set(_ops("orthogonality")) == {"resized_crop", "hflip", "vflip", "normalize"}
    assert set(_ops("lorot")) == {"resized_crop", "hflip", "lorot", "normalize"}
    assert set(_ops("dcl")) == {"resized_crop", "hflip", "region_confusion", "normalize"}
    assert _ops("dcl")["region_confusion"].grid == 7
    assert set(_ops("baseline_lorot")) == set(base) | {"lorot"}
    assert set(_ops("baseline_dcl")) == set(base) | {"region_confusion"}


def test_byol_views_differ_only_in_blur_and_solarize() -> None:
    first, second = _pipelines("byol")
    a = {op: params for _, op, params in first.spec}
    b = {op: params for _, op, params in second.spec}
    assert (a["gaussian_blur"].p, b["gaussian_blur"].p) == (1.0, 0.1)
    assert (a["solarize"].p, b["solarize"].p) == (0.0, 0.2)
    assert {op for op in a if a[op] != b[op]} == {"gaussian_blur", "solarize"}
    assert a["color_jitter"].brightness == 0.4 and a["color_jitter"].saturation == 0.2


@pytest.mark.parametrize("name", ALL_PIPELINES)
def test_each_pipeline_makes_views_and_its_labels(name: str, fmnist_batch) -> None:
    images, aspect, _ = fmnist_batch
    for pipeline in _pipelines(name):
        made = pipeline.views(images, aspect, make_generator(0, "cpu", 1), coordinates=True)
        assert made.images.shape == (64, 3, 32, 32) and torch.isfinite(made.images).all()
        assert made.coords is not None and made.coords.shape == (64, 2, 32, 32)
        assert set(made.labels) == PRETEXT_LABELS.get(name, set())


def test_a_bad_pipeline_yaml_fails_naming_the_choices(tmp_path, capsys) -> None:
    bad_op = tmp_path / "bad_op.yaml"
    bad_op.write_text("name: bad\nops:\n  resized_crop: null\n  swirl: {p: 0.5}\n")
    assert main(["pretrain", f"transform={bad_op}"]) == 2
    message = capsys.readouterr().err.strip()
    assert "unknown op 'swirl'" in message and "region_confusion" in message
    assert "\n" not in message
    bad_view = tmp_path / "bad_view.yaml"
    bad_view.write_text("ops:\n  hflip: null\nviews:\n  - {}\n  - {blur: {p: 0.1}}\n")
    with pytest.raises(ConfigError, match="view 2 overrides unknown entry 'blur'; entries: hflip"):
        compose([f"transform={bad_view}"])
    with pytest.raises(ConfigError, match="unknown key 'opz'.*valid: name, ops, views"):
        (tmp_path / "typo.yaml").write_text("opz: {}\nops: {hflip: null}\n")
        compose([f"transform={tmp_path / 'typo.yaml'}"])
    with pytest.raises(ConfigError, match="transform file not found"):
        compose([f"transform={tmp_path / 'missing.yaml'}"])


def _run(tmp_path: Path, name: str, *overrides: str) -> dict:
    run_dir = tmp_path / name
    assert main(["pretrain", *TINY_RUN, *overrides, f"run_dir={run_dir}"]) == 0
    return json.loads((run_dir / "results.json").read_text())


@needs_fmnist
@pytest.mark.parametrize("transform", STUDY_PIPELINES)
def test_simclr_trains_with_each_study_pipeline(tmp_path, transform: str) -> None:
    results = _run(tmp_path, transform, "method=simclr", f"transform={transform}")
    assert results["status"] == "completed" and results["transform"] == transform
    assert 0.0 <= results["linear_top1"] <= 1.0


@needs_fmnist
@pytest.mark.parametrize(
    ("method", "transform", "extra"),
    [
        ("swav", "lorot", ()),
        ("vicregl", "dcl", ("backbone.small_stem=true", "transform.ops.region_confusion.grid=4")),
        ("byol", "byol", ()),
    ],
)
def test_multicrop_and_asymmetric_methods_train_with_pipelines(
    tmp_path, method: str, transform: str, extra: tuple[str, ...]
) -> None:
    results = _run(tmp_path, method, f"method={method}", f"transform={transform}", *extra)
    assert results["status"] == "completed" and results["method"] == method


@needs_fmnist
def test_a_pipeline_written_only_in_yaml_runs_and_repeats_without_its_file(tmp_path) -> None:
    user = tmp_path / "simclr_vflip.yaml"
    user.write_text(
        "# SimCLR with a vertical flip and a stronger jitter\n"
        "defaults: [simclr, _self_]\n"
        "name: simclr_vflip\n"
        "ops:\n"
        "  vflip: {p: 0.5}\n"
        "  color_jitter: {brightness: 1.0, contrast: 1.0, saturation: 1.0, hue: 0.4}\n"
    )
    results = _run(tmp_path, "user", "method=simclr", f"transform={user}")
    assert results["status"] == "completed" and results["transform"] == "simclr_vflip"
    saved = OmegaConf.load(tmp_path / "user" / "config.yaml")
    assert saved.transform.ops.vflip.p == 0.5 and saved.transform.ops.color_jitter.hue == 0.4
    assert "gaussian_blur" in saved.transform.ops  # inherited from simclr
    user.unlink()  # the saved config alone repeats the run
    again = tmp_path / "again"
    assert main(["pretrain", "--config", str(tmp_path / "user" / "config.yaml"),
                 f"run_dir={again}"]) == 0  # fmt: skip
    repeated = json.loads((again / "results.json").read_text())
    assert repeated["linear_top1"] == results["linear_top1"]


@needs_fmnist
def test_an_impossible_pair_is_one_clear_error(tmp_path, capsys) -> None:
    # SwAV's 14-px local crops cannot hold DCL's 16x16 grid (the global 32-px views can).
    grid = "transform.ops.region_confusion.grid=16"
    code = main(
        ["pretrain", *TINY_RUN, "method=swav", "transform=dcl", grid, f"run_dir={tmp_path}/r"]
    )
    assert code == 2  # bad input: refused before the run folder
    err = capsys.readouterr().err.strip()
    assert "16x16 grid needs views of at least 16 px, these are 14 px" in err
    assert not (tmp_path / "r").exists()
    assert "\n" not in err
