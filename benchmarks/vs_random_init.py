"""Pretrained vs random-init backbone, same probe, over seeds and setting variants.

Each variant is one string of overrides applied on top of ``--base`` (default
``experiment=demo``); every (variant, seed) pair is one real run: pretraining, then the
evaluation of the trained and of the random-init backbone. One JSON line per run goes to
--out, and a table (mean ± half the range over seeds) to stdout. Used to choose the demo's
settings and to check that every method learns:

    python benchmarks/vs_random_init.py --seeds 0 1 2 \
        --variant "" --variant "batch_size=128 method.temperature=0.2"
    python benchmarks/vs_random_init.py --seeds 0 --variant "method=byol" --variant "method=swav"
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from sslbench.config import compose
from sslbench.run.evaluate import evaluate_run
from sslbench.run.pretrain import pretrain


def run_one(base: list[str], overrides: list[str], seed: int, runs_root: str) -> dict:
    cfg = compose([*base, f"seed={seed}", f"runs_root={runs_root}", "progress_bar=false",
                   *overrides])  # fmt: skip
    start = time.perf_counter()
    trained = pretrain(cfg)
    random_init = evaluate_run(cfg.run_dir, cfg, random_init=True)
    return {
        "overrides": overrides,
        "seed": seed,
        "method": trained["method"],
        "trained_linear": trained["linear_top1"],
        "trained_knn": trained["knn_top1"],
        "random_linear": random_init["linear_top1"],
        "random_knn": random_init["knn_top1"],
        "pretrain_minutes": trained["pretrain_seconds"] / 60,
        "total_minutes": (time.perf_counter() - start) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", action="append", default=[], help="overrides, space-separated")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base", default="experiment=demo", help="overrides every run shares")
    parser.add_argument("--out", default="benchmarks/results/vs_random_init.jsonl")
    args = parser.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as runs_root:
        for variant in args.variant or [""]:
            for seed in args.seeds:
                row = run_one(args.base.split(), variant.split(), seed, runs_root)
                rows.append(row)
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(f"\n{'variant':<60}{'trained lin':>14}{'random lin':>14}{'trained kNN':>14}"
          f"{'random kNN':>14}{'min':>6}")  # fmt: skip
    for variant in args.variant or [""]:
        group = [r for r in rows if r["overrides"] == variant.split()]

        def cell(key: str, group: list[dict] = group) -> str:
            values = [r[key] for r in group]
            spread = max(values) - min(values)
            return f"{statistics.mean(values):.3f}±{spread / 2:.3f}"

        minutes = statistics.mean(r["total_minutes"] for r in group)
        print(f"{variant or '(base)':<60}{cell('trained_linear'):>14}{cell('random_linear'):>14}"
              f"{cell('trained_knn'):>14}{cell('random_knn'):>14}{minutes:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
