"""End to end: real SimCLR runs on a few hundred real Fashion-MNIST images (a failing one on
generated images), through the command line in-process, with the run contract checked field
by field."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LEARNING_RUN, TINY_RUN, needs_fmnist
from PIL import Image

from sslbench.cli import main
from sslbench.methods import Views, method_class
from sslbench.methods.simclr import SimCLR
from sslbench.run.results import CONTRACT_FIELDS

TINY = ["method=simclr", *TINY_RUN]  # later overrides (epochs=3, ...) win


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@needs_fmnist
def test_tiny_simclr_run_writes_complete_results(
    finished_run, finished_run_output, tmp_path, capsys
) -> None:
    """The shared tiny run (`pretrain` with TINY), checked on a copy: eval and the hostile
    checkpoint below change the folder."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    assert "linear top-1" in finished_run_output
    results = _results(run_dir)
    assert set(CONTRACT_FIELDS) <= set(results)
    assert results["status"] == "completed" and results["error"] is None
    assert (results["method"], results["transform"], results["dataset"]) == (
        "simclr", "simclr", "fashion-mnist",
    )  # fmt: skip
    assert (results["epochs"], results["batch_size"], results["image_size"]) == (1, 64, 32)
    for key in ("linear_top1", "linear_top5", "knn_top1"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["linear_top5"] >= results["linear_top1"]
    assert results["linear_top1"] > 0.3  # 10 classes: chance is 0.1, even random features do better
    assert "linear" in results["probe"] and results["evaluations"]["knn_top1"]["k"] == 200
    assert results["pretrain_seconds"] > 0 and results["images_per_second"] > 0
    assert results["peak_gpu_memory_bytes"] is None  # no GPU here
    assert results["peak_host_memory_bytes"] > 50e6
    assert set(results["versions"]) >= {"python", "torch", "lightly", "timm", "sslbench"}
    assert results["train_images"] == 128 and results["test_images"] == 64
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "last.ckpt").is_file()
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("train_loss_epoch") for row in rows)
    assert not list(run_dir.glob("*.tmp"))

    # `sslbench eval` evaluates the saved checkpoint again: same features, same numbers.
    assert main(["eval", f"run_dir={run_dir}"]) == 0
    again = _results(run_dir)
    assert again["linear_top1"] == pytest.approx(results["linear_top1"], abs=1e-6)
    assert again["knn_top1"] == pytest.approx(results["knn_top1"], abs=1e-6)

    # A run folder from elsewhere whose checkpoint carries code: refused, the code never runs.
    checkpoint = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["payload"] = WritesAFile(str(tmp_path / "pwned"))
    torch.save(checkpoint, run_dir / "last.ckpt")
    assert main(["eval", f"run_dir={run_dir}"]) == 1
    assert "holds more than weights" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


class WritesAFile:
    """Unpickling this writes a file: what a hostile checkpoint could do instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@needs_fmnist
def test_run_repeats_from_its_saved_config(tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["pretrain", *TINY, "method.temperature=0.3", f"run_dir={first}"]) == 0
    config = first / "config.yaml"
    assert main(["pretrain", "--config", str(config), f"run_dir={second}"]) == 0
    a, b = _results(first), _results(second)
    assert b["status"] == "completed"
    # The same config on the same machine gives the same trained backbone and numbers.
    for key in ("linear_top1", "linear_top5", "knn_top1"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    first_state = torch.load(first / "last.ckpt", map_location="cpu", weights_only=True)
    second_state = torch.load(second / "last.ckpt", map_location="cpu", weights_only=True)
    weight = "backbone.conv1.0.weight"
    assert torch.allclose(first_state["state_dict"][weight], second_state["state_dict"][weight])


@needs_fmnist
def test_runs_of_different_seeds_are_scored_on_the_same_test_images(finished_run, tmp_path):
    fingerprints = [_results(finished_run)["test_subset"]]  # TINY at seed 0, the default
    run_dir = tmp_path / "seed1"
    assert main(["pretrain", *TINY, "seed=1", f"run_dir={run_dir}"]) == 0
    fingerprints.append(_results(run_dir)["test_subset"])
    assert fingerprints[0] == fingerprints[1]
    assert fingerprints[0]["count"] == 64 and fingerprints[0]["split_size"] == 10_000
    assert len(fingerprints[0]["sha256"]) == 64

    # The training subset still follows the run's seed; eval.subset_seed picks another test set.
    from sslbench.config import compose
    from sslbench.data.splits import open_data

    runs = [compose([*TINY, f"seed={seed}"]) for seed in (0, 1)]
    runs.append(compose([*TINY, "eval.subset_seed=1"]))
    data = [open_data(cfg, progress=False) for cfg in runs]
    assert not np.array_equal(data[0].train_indices, data[1].train_indices)
    np.testing.assert_array_equal(data[0].test_indices, data[1].test_indices)
    assert not np.array_equal(data[0].test_indices, data[2].test_indices)


def test_nonfinite_loss_fails_the_run_with_its_step(
    synthetic_run, tmp_path, monkeypatch, capsys
) -> None:
    def nan_loss(self: SimCLR, views: Views) -> torch.Tensor:
        return self.backbone(views.global_views[0]).sum() * float("nan")

    monkeypatch.setattr(SimCLR, "training_loss", nan_loss)
    run_dir = tmp_path / "nan"
    args = ["method=simclr", *synthetic_run, "check_finite_every_n_steps=1"]
    code = main(["pretrain", *args, f"run_dir={run_dir}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite training loss at step 0" in err
    results = _results(run_dir)
    assert results["status"] == "failed"
    assert "non-finite" in results["error"]
    assert (run_dir / "error.log").is_file()


def test_missing_data_fails_cleanly(tmp_path, capsys) -> None:
    """A mistake on the command line: said before anything is built, no run folder left."""
    run_dir = tmp_path / "missing"
    code = main(["pretrain", "dataset=folder", f"dataset.path={tmp_path / 'nowhere'}",
                 "backbone=resnet10t", f"run_dir={run_dir}", "progress_bar=false"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere does not exist" in err and "\n" not in err
    assert not run_dir.exists()


def test_pretrain_on_a_flat_folder_of_unlabeled_images(tmp_path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 256, size=(24 + i % 3 * 8, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    run_dir = tmp_path / "run"
    code = main(["pretrain", "dataset=folder", f"dataset.path={folder}", "backbone=resnet10t",
                 "image_size=16", "batch_size=16", "epochs=1", f"run_dir={run_dir}",
                 "progress_bar=false"])  # fmt: skip
    assert code == 0
    results = _results(run_dir)
    assert results["status"] == "completed"
    assert results["linear_top1"] is None and "not evaluated" in results["probe"]


@pytest.mark.slow
@needs_fmnist
def test_demo_beats_random_init(tmp_path, capsys) -> None:
    """`sslbench demo` at the learning tests' setting: SimCLR's learning test too."""
    run = method_class("simclr").learning_run_overrides
    assert main(["demo", *LEARNING_RUN, *run, f"runs_root={tmp_path}", "progress_bar=false"]) == 0
    out = capsys.readouterr().out
    assert "random init" in out and "SimCLR" in out
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = _results(run_dir)
    assert results["linear_top1"] > results["random_init"]["linear_top1"]
    gain = 100 * (results["linear_top1"] - results["random_init"]["linear_top1"])
    said = " ".join(out.split())  # the sentence is wrapped for the terminal
    assert f"SimCLR's pretraining changed them by {gain:+.1f} and" in said  # what they mean
