"""Bad input, row by row of docs/errors.md: one line naming the bad value and the valid
choices (or the fix), a non-zero exit, and nothing lost. Rows tested elsewhere name their
test in the table; the last test here checks that every test the table names exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fmnist, one_line_error
from PIL import Image

from sslbench.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("method=simclrr", ["simclrr", "barlowtwins", "vicregl"]),
        ("transform=simclrr", ["transform 'simclrr'", "baseline", "lorot", "dcl"]),
        ("dataset=imagenet", ["imagenet", "imagenette", "nabirds", "folder"]),
        ("pretext=rotation", ["rotation", "lorot", "dcl", "none"]),
        ("epoch=3", ["'epoch'", "epochs"]),
        ("method.temperatur=0.2", ["method.temperatur", "temperature"]),
        ("epochs=three", ["epochs must be int", "'three'"]),
        ("backbone.small_stem=maybe", ["backbone.small_stem", "bool"]),
        ("pretext=lorot", ["lorot", "transform=lorot"]),  # pipeline/pretext mismatch
    ],
)
def test_a_command_line_mistake_is_one_line_exit_2(override, named, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main(["pretrain", override, f"run_dir={run_dir}"]) == 2
    err = one_line_error(capsys)
    for text in named:
        assert text in err
    assert not run_dir.exists()


def test_an_unknown_backbone_names_close_timm_models_and_leaves_no_folder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["pretrain", "backbone=resnet181", f"run_dir={run_dir}"]) == 2
    err = one_line_error(capsys)
    assert "unknown backbone 'resnet181'" in err and "resnet18" in err
    assert not run_dir.exists()


def test_a_transform_with_more_views_than_the_method_takes(tmp_path, capsys) -> None:
    three = tmp_path / "three.yaml"
    three.write_text("defaults: [simclr, _self_]\nname: three\nviews: [{}, {}, {}]\n")
    run_dir = tmp_path / "run"
    assert main(["pretrain", f"transform={three}", "backbone=resnet10t", f"run_dir={run_dir}"]) == 2
    err = one_line_error(capsys)
    assert "transform 'three' defines 3 view variants" in err and "simclr takes 2" in err
    assert not run_dir.exists()


PREFLIGHT = """
import sys
from sslbench.cli import main
codes = [main(args) for args in {cases!r}]
print(codes, "torch" in sys.modules)
"""


def test_a_bad_dataset_path_is_said_before_torch_and_leaves_nothing(tmp_path) -> None:
    """No such path, a folder without images, and a folder with fewer images than the batch:
    each said in one line by a process that never imports torch, no run folder or cache."""
    empty = tmp_path / "empty"
    (empty / "class_a").mkdir(parents=True)
    (empty / "class_a" / "notes.txt").write_text("not an image")
    few = tmp_path / "few"
    few.mkdir()
    for i in range(20):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(few / f"{i}.png")
    runs = tmp_path / "runs"
    common = ["dataset=folder", "batch_size=32", f"runs_root={runs}"]
    cases = [
        ["pretrain", *common, f"dataset.path={tmp_path / 'nowhere'}"],
        ["pretrain", *common, f"dataset.path={empty}"],
        ["pretrain", *common, f"dataset.path={few}"],
        ["pretrain", "batch_size=64", "dataset.max_train=50", f"runs_root={runs}"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", PREFLIGHT.format(cases=cases)],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "SSLBENCH_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert done.stdout.strip() == "[2, 2, 2, 2] False", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("sslbench: error: ") for line in lines)
    assert "nowhere does not exist" in lines[0]
    assert "no images" in lines[1] and ".png" in lines[1]
    assert "batch_size=32 is more than the 20 training images" in lines[2]
    assert "batch_size=16 fits" in lines[2]
    assert "dataset.max_train=50" in lines[3] and "batch_size=32 fits" in lines[3]
    assert not runs.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("run_dir", ["a,b", "x=y", "f(1)", "it's [v2] {x}", "back\\slash\\"])
def test_a_run_dir_is_taken_literally(run_dir, tmp_path, capsys) -> None:
    """Hydra's grammar gives , = ( [ { meanings; a folder name is just a name."""
    from sslbench.config import compose

    folder = str(tmp_path / run_dir)
    assert compose([f"run_dir={folder}"]).run_dir == folder
    assert main(["pretrain", f"run_dir={folder}", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == f"1 run: {folder}"
    assert compose([f"runs_root={folder}"]).run_dir.startswith(folder + "/")


def test_a_config_file_that_expands_without_bound_is_refused(tmp_path, capsys) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        previous = "abcdefgh"[i]
        levels.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")
    bomb = tmp_path / "config.yaml"
    bomb.write_text("\n".join(levels) + "\n")
    assert main(["pretrain", "--config", str(bomb)]) == 2
    err = one_line_error(capsys)
    assert "YAML aliases" in err and "1,234,567,909 values" in err
    loop = tmp_path / "loop.yaml"
    loop.write_text("a: &a [*a]\n")
    assert main(["pretrain", f"transform={loop}"]) == 2
    assert "recursive YAML alias" in one_line_error(capsys)


@pytest.mark.parametrize(
    "override", ["dataset.url=https://${oc.env:TOKEN}@mirror/x", "run_dir=/r/${oc.env:HOME}"]
)
def test_an_environment_variable_never_reaches_config_yaml(override, capsys) -> None:
    assert main(["pretrain", override, "--dry-run"]) == 2
    err = one_line_error(capsys)
    assert "oc.env" in err and "config.yaml" in err


@needs_fmnist
def test_a_checkpoint_from_another_config_is_named(finished_run, tmp_path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(finished_run, other)
    config = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(re.sub(r"output_dim: \d+", "output_dim: 64", config))
    before = (other / "results.json").read_text()
    capsys.readouterr()
    assert main(["eval", f"run_dir={other}"]) == 1
    err = one_line_error(capsys)
    assert "last.ckpt was not written by this run's config.yaml" in err and "size mismatch" in err
    assert (other / "results.json").read_text() == before

    # eval changes how the backbone is scored, never what was trained
    assert main(["eval", f"run_dir={finished_run}", "method.output_dim=64"]) == 2
    err = one_line_error(capsys)
    assert "method.output_dim=64" in err and "eval.*" in err


def test_a_non_finite_loss_stops_names_the_step_and_keeps_the_checkpoint(
    synthetic_run, tmp_path, monkeypatch, capsys
) -> None:
    from sslbench.methods import Views
    from sslbench.methods.simclr import SimCLR

    honest = SimCLR.training_loss

    def nan_from_step_3(self: SimCLR, views: Views) -> torch.Tensor:
        loss = honest(self, views)
        return loss * float("nan") if self.global_step >= 3 else loss

    monkeypatch.setattr(SimCLR, "training_loss", nan_from_step_3)
    run_dir = tmp_path / "nan"
    args = ["method=simclr", *synthetic_run, "epochs=3", "check_finite_every_n_steps=1"]
    assert main(["pretrain", *args, f"run_dir={run_dir}"]) == 1
    err = one_line_error(capsys)
    assert "non-finite training loss at step 3 (epoch 1)" in err and "method.optimizer.lr" in err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed"
    saved = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2  # the end of epoch 0, before the first bad step
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_out_of_gpu_memory_names_a_batch_size_to_try(
    synthetic_run, tmp_path, monkeypatch, capsys
) -> None:
    import sslbench.run.pretrain

    def out_of_memory(*args, **kwargs) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB ...")

    monkeypatch.setattr(sslbench.run.pretrain, "fit", out_of_memory)
    run_dir = tmp_path / "oom"
    assert main(["pretrain", "method=simclr", *synthetic_run, f"run_dir={run_dir}"]) == 1
    err = one_line_error(capsys)
    assert "out of GPU memory training at batch_size=64; try batch_size=32" in err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and "batch_size=32" in results["error"]
    assert "CUDA out of memory" in (run_dir / "error.log").read_text()  # torch's own words


def _tests_named_in_docs() -> list[str]:
    table = (ROOT / "docs" / "errors.md").read_text()
    return sorted(set(re.findall(r"`(tests/(?:\w+/)?test_\w+\.py)::(test_\w+)`", table)))


def test_every_row_of_the_table_names_a_test_that_exists() -> None:
    named = _tests_named_in_docs()
    assert len(named) >= 20
    for path, test in named:
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {test}\(", source, re.M), f"{path}::{test} is not defined"


def test_vicregl_on_a_one_by_one_feature_map_leaves_no_folder(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["method=vicregl", "backbone=resnet10t", "image_size=32", f"run_dir={run_dir}"]
    assert main(["pretrain", *args]) == 2
    err = one_line_error(capsys)
    assert "VICRegL needs feature maps larger than 1x1" in err and "small_stem=true" in err
    assert not run_dir.exists()
