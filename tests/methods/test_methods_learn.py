"""Slow, real-data check that every method learns: each trained briefly on Fashion-MNIST
beats the same backbone at random initialisation on linear top-1, with the same probe.

The settings per method (each class's ``learning_run_overrides``: 2 epochs where the method
beats random init by 2 linear points or more there, else 3; docs/benchmarks.md has the
measurements) keep the whole file within about 10 minutes on the 2-core machine of
2026-12-07 (17 runs; SimCLR's is the demo test's).
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import LEARNING_RUN, method_names
from omegaconf import DictConfig, OmegaConf

from sslbench.config import compose
from sslbench.methods import method_class
from sslbench.run.evaluate import evaluate_run
from sslbench.run.pretrain import pretrain

BASE = ["experiment=demo", "progress_bar=false", *LEARNING_RUN]


#: What a random-init score depends on: the backbone's initial weights (the seed, the backbone
#: and image size: the run builds the backbone first after seeding) and what the probe sees
#: (the data, the transform's evaluation view, the probe's settings); not the method.
RANDOM_INIT_KEYS = ("seed", "backbone", "image_size", "dataset", "transform", "eval")
_random_init_scores: dict[str, dict[str, Any]] = {}


def random_init_scores(cfg: DictConfig) -> dict[str, Any]:
    """``evaluate_run(random_init=True)`` of the run, computed once per distinct setting."""
    key = OmegaConf.to_yaml({k: cfg[k] for k in RANDOM_INIT_KEYS}, resolve=True)
    if key not in _random_init_scores:
        _random_init_scores[key] = evaluate_run(cfg.run_dir, cfg, random_init=True)
    return _random_init_scores[key]


#: SimCLR's whole run at this setting is tests/run/test_pretrain.py's `sslbench demo` test.
#: The methods made for ViTs are measured by benchmarks/vs_random_init.py instead (their
#: learning runs, docs/benchmarks.md "ViT methods"): a ViT-Ti learning run takes about three
#: minutes on the 2-core machine, which would double this file's time; in the suite, each
#: has a tiny run (tests/methods/test_vit_runs.py) and steps that lower its loss.
LEARNERS = [
    name for name in method_names()
    if name != "simclr" and method_class(name).backbone_kinds != ("vit",)
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", LEARNERS)
def test_method_beats_random_init(method: str, tmp_path) -> None:
    run = method_class(method).learning_run_overrides
    cfg = compose([*BASE, f"method={method}", *run, f"runs_root={tmp_path}"])
    trained = pretrain(cfg)
    random_init = random_init_scores(cfg)
    linear, knn = trained["linear_top1"], trained["knn_top1"]
    print(
        f"\n{method}: linear {linear:.3f} vs random {random_init['linear_top1']:.3f}, "
        f"kNN {knn:.3f} vs {random_init['knn_top1']:.3f}, "
        f"{trained['pretrain_seconds'] / 60:.1f} min"
    )
    assert trained["status"] == "completed"
    assert trained["linear_top1"] > random_init["linear_top1"]
