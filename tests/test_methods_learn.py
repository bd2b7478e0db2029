"""Slow, real-data check that every method learns: each trained briefly on Fashion-MNIST
beats the same backbone at random initialisation on linear top-1, with the same probe.

The settings per method (benchmarks/vs_random_init.py measured them; docs/benchmarks.md
has the table) keep the whole file within ~15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import pytest

from sslbench.config import compose
from sslbench.train import evaluate_run, pretrain

# Shared by every method: the demo's data, backbone and probe, a shorter run.
BASE = ["experiment=demo", "progress_bar=false", "dataset.max_train=4000", "dataset.max_test=1000"]

#: Method → overrides for a short run that learns on the 2-core CPU.
RUNS: dict[str, list[str]] = {
    "simclr": ["epochs=3"],
    "simsiam": ["epochs=3"],
    "byol": ["epochs=3"],
    "barlowtwins": ["epochs=3"],
    "vicreg": ["epochs=3", "method.optimizer.warmup_epochs=0.3"],
    "swav": ["epochs=3"],
    "vicregl": ["epochs=3", "method.optimizer.warmup_epochs=0.3"],
}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("SSLBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.slow
@pytest.mark.parametrize("method", list(RUNS))
def test_method_beats_random_init(method: str, tmp_path) -> None:
    cfg = compose([*BASE, f"method={method}", *RUNS[method], f"runs_root={tmp_path}"])
    trained = pretrain(cfg)
    random_init = evaluate_run(cfg.run_dir, cfg, random_init=True)
    print(
        f"\n{method}: linear {trained['linear_top1']:.3f} vs random {random_init['linear_top1']:.3f}"
        f", kNN {trained['knn_top1']:.3f} vs {random_init['knn_top1']:.3f}"
        f", {trained['pretrain_seconds'] / 60:.1f} min"
    )
    assert trained["status"] == "completed"
    assert trained["linear_top1"] > random_init["linear_top1"]
