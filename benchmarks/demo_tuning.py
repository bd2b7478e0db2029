"""Compare demo settings over seeds: SimCLR vs the random-init backbone, same probe.

Each variant is one string of overrides applied on top of ``experiment=demo``; every
(variant, seed) pair is one real run (pretrain + evaluation of the trained and the
random-init backbone). One JSON line per run goes to --out, and a table to stdout.

    python benchmarks/demo_tuning.py --seeds 0 1 2 \
        --variant "" --variant "batch_size=128 method.temperature=0.2"
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from sslbench.config import compose
from sslbench.train import evaluate_run, pretrain


def run_one(overrides: list[str], seed: int, runs_root: str) -> dict:
    cfg = compose(["experiment=demo", f"seed={seed}", f"runs_root={runs_root}",
                   "progress_bar=false", *overrides])  # fmt: skip
    start = time.perf_counter()
    trained = pretrain(cfg)
    random_init = evaluate_run(cfg.run_dir, cfg, random_init=True)
    return {
        "overrides": overrides,
        "seed": seed,
        "simclr_linear": trained["linear_top1"],
        "simclr_knn": trained["knn_top1"],
        "random_linear": random_init["linear_top1"],
        "random_knn": random_init["knn_top1"],
        "pretrain_minutes": trained["pretrain_seconds"] / 60,
        "total_minutes": (time.perf_counter() - start) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", action="append", default=[], help="overrides, space-separated")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/demo_tuning.jsonl")
    args = parser.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as runs_root:
        for variant in args.variant or [""]:
            for seed in args.seeds:
                row = run_one(variant.split(), seed, runs_root)
                rows.append(row)
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(f"\n{'variant':<60}{'SimCLR lin':>14}{'random lin':>14}{'SimCLR kNN':>14}"
          f"{'random kNN':>14}{'min':>6}")  # fmt: skip
    for variant in args.variant or [""]:
        group = [r for r in rows if r["overrides"] == variant.split()]

        def cell(key: str, group: list[dict] = group) -> str:
            values = [r[key] for r in group]
            spread = max(values) - min(values)
            return f"{statistics.mean(values):.3f}±{spread / 2:.3f}"

        minutes = statistics.mean(r["total_minutes"] for r in group)
        print(f"{variant or '(demo)':<60}{cell('simclr_linear'):>14}{cell('random_linear'):>14}"
              f"{cell('simclr_knn'):>14}{cell('random_knn'):>14}{minutes:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
