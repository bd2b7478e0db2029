"""Training batches gathered from images held in memory (``data_path=device|pinned``) are
the DataLoader's batches, so a run gives the same result either way; ``compile`` wraps the
backbone's feature extractor."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, build_method, needs_fmnist
from torch.utils.data import DataLoader

from sslbench.cli import main
from sslbench.config import compose
from sslbench.data import IndexedImages, collate_batch
from sslbench.data.cache_files import CachedSplit
from sslbench.data.held import HeldBatches, choose_placement
from sslbench.data.splits import RunData
from sslbench.data.worker_views import StepBatchSampler
from sslbench.errors import ConfigError
from sslbench.run.batches import train_batches, train_loader


def _split(n: int = 50, side: int = 6) -> CachedSplit:
    rng = np.random.default_rng(0)
    return CachedSplit(
        images=rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8),
        labels=rng.integers(0, 5, n).astype(np.int64),
        sizes=rng.integers(10, 40, (n, 2)).astype(np.int32),
    )


def _run_data(split: CachedSplit, indices: np.ndarray) -> RunData:
    return RunData(split, None, indices, None, split, indices)


@pytest.mark.parametrize("placement", ["device", "pinned"])
def test_held_batches_are_the_dataloaders_batches(placement) -> None:
    split = _split()
    indices = np.array([7, 3, 44, 12, 0, 31, 25, 9, 18, 40, 2, 36, 21, 5, 48, 14])
    cfg = compose(["batch_size=4", "seed=3"])
    loader = train_loader(cfg, _run_data(split, indices), world_size=1)
    held = HeldBatches(split, indices, batch_size=4, seed=3, device="cpu", placement=placement)
    assert len(held) == len(loader) == 4
    for _epoch in range(3):  # a new permutation each epoch, the same on both sides
        for ours, theirs in zip(held, loader, strict=True):
            for a, b in zip(ours, theirs, strict=True):
                assert a.dtype == b.dtype
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert held.nbytes == len(indices) * 3 * 6 * 6


def test_step_batches_are_the_dataloaders_batches_with_their_steps() -> None:
    split = _split()
    indices = np.arange(10, 30)
    plain = train_loader(compose(["batch_size=6", "seed=1"]), _run_data(split, indices), 1)
    sampler = StepBatchSampler(len(indices), 6, seed=1)
    tagged = DataLoader(
        IndexedImages(split, indices), batch_sampler=sampler, collate_fn=collate_batch
    )
    for _epoch in range(3):  # as Lightning reads them: an epoch's batches, no more
        ours_epoch = itertools.islice(tagged, len(tagged))
        for ours, theirs in zip(ours_epoch, itertools.islice(plain, len(plain)), strict=True):
            torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    steps = [(b.epoch, b.step) for b in sampler]  # the next epoch's tags
    assert steps == [(3, 9), (3, 10), (3, 11)]
    sampler.epoch, sampler.skip = 1, 2  # a run resumed after 2 batches of epoch 1
    assert [(b.epoch, b.step) for b in sampler] == [(1, 5)]


def test_every_source_gives_epoch_e_its_own_order_and_can_skip() -> None:
    """Epoch e's order depends on (seed, e) only: a resumed run can start at any epoch."""
    split = _split()
    indices = np.arange(24)
    held = HeldBatches(split, indices, batch_size=4, seed=5, device="cpu")
    loader = train_loader(compose(["batch_size=4", "seed=5"]), _run_data(split, indices), 1)
    sampler = StepBatchSampler(len(indices), 4, seed=5)
    epochs = [[b[2].tolist() for b in held] for _ in range(3)]  # labels of each batch
    assert epochs[0] != epochs[1] != epochs[2]
    for source in (held, loader.batch_sampler, sampler):
        source.epoch, source.skip = 2, 3
    assert [b[2].tolist() for b in held] == epochs[2][3:]
    assert [b[2].tolist() for b in loader] == epochs[2][3:]
    assert [split.labels[indices[b]].tolist() for b in sampler] == epochs[2][3:]
    assert (held.epoch, held.skip) == (3, 0)  # then on as usual


def test_data_path_choices() -> None:
    split = _split()
    data = _run_data(split, np.arange(20))
    assert choose_placement(10**12, torch.device("cpu")) is None  # a CPU reads the cache map
    model = None  # only data_path=workers asks the model for its views
    auto = train_batches(compose(["batch_size=4"]), data, 1, "cpu", model)
    assert isinstance(auto, torch.utils.data.DataLoader)
    held = train_batches(compose(["batch_size=4", "data_path=device"]), data, 1, "cpu", model)
    assert isinstance(held, HeldBatches) and held.placement == "device"
    with pytest.raises(ValueError, match="data_path=device feeds one device; with devices=2"):
        train_batches(compose(["batch_size=4", "data_path=device"]), data, 2, "cpu", model)
    with pytest.raises(ConfigError, match="data_path must be one of auto, dataloader, device"):
        compose(["data_path=gpu"])
    with pytest.raises(ConfigError, match="compile must be one of none, default"):
        compose(["compile=fast"])
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        compose(["threads=0"])
    assert compose(["data_path=device", "compile=default"]).run_dir == compose([]).run_dir


def _epoch_losses(run_dir) -> list[str]:
    with open(run_dir / "metrics.csv") as handle:
        return [
            row["train_loss_epoch"] for row in csv.DictReader(handle) if row["train_loss_epoch"]
        ]


@needs_fmnist
def test_a_run_is_the_same_from_held_images_worker_views_and_the_dataloader(tmp_path) -> None:
    results = {}
    for path in ("dataloader", "device", "workers"):
        run_dir = tmp_path / path
        assert main(["pretrain", *TINY_RUN, "epochs=2", f"data_path={path}",
                     f"run_dir={run_dir}"]) == 0  # fmt: skip
        results[path] = json.loads((run_dir / "results.json").read_text())
        results[path]["losses"] = _epoch_losses(run_dir)
    plain, held, workers = results["dataloader"], results["device"], results["workers"]
    assert [r["data_path"] for r in results.values()] == ["dataloader", "device", "workers"]
    assert plain["held_images_bytes"] is None and held["held_images_bytes"] == 128 * 3 * 28 * 28
    assert len(plain["losses"]) == 2
    for other in (held, workers):  # the same batches and views: the same run
        assert other["losses"] == plain["losses"]
        assert other["linear_top1"] == plain["linear_top1"]


def test_compile_wraps_the_feature_extractor_after_the_method_is_built(monkeypatch) -> None:
    compiled = []

    def fake_compile(fn, mode):
        compiled.append((fn, mode))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    method, _ = build_method("method=byol", "compile=reduce-overhead")
    ((fn, mode),) = compiled
    assert mode == "reduce-overhead"
    assert fn.__self__ is method.backbone and fn.__name__ == "forward_features"
    assert "forward_features" not in vars(method.backbone_target)  # the EMA copy stays plain
    build_method("method=byol")
    assert len(compiled) == 1  # compile=none (the default) compiles nothing


@pytest.mark.slow
@needs_fmnist
def test_a_compiled_run_trains_and_scores(tmp_path) -> None:
    run_dir = tmp_path / "compiled"
    assert main(["pretrain", *TINY_RUN, "compile=default", f"run_dir={run_dir}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["linear_top1"] > 0.3
