"""Runs sharing the CPU: how much slower is each of K runs started together than one alone?

Starts K copies of the same ``sslbench pretrain`` run (each its own process and run folder)
at once, for each OpenMP wait policy, and reports each copy's training time
(``pretrain_seconds``) and wall time against the same run alone:

    python benchmarks/shared_cores.py --copies 1 2 --policies DEFAULT PASSIVE ACTIVE \\
        --out benchmarks/results/shared_cores.jsonl -- experiment=demo epochs=1

``DEFAULT`` is sslbench's choice (``sslbench.host``: a short spin, then sleep); ``PASSIVE``
sleeps at once; ``ACTIVE`` spins (``--spincount N`` caps its spins). Every copy sees the same
cores and picks its thread count the way a user's run does (``threads`` unset). Run it
with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_copies(
    copies: int, policy: str, overrides: list[str], root: Path, spincount: int | None = None
) -> list[dict]:
    """Start ``copies`` runs at once with OMP_WAIT_POLICY=policy (and GOMP_SPINCOUNT, the
    spins before a waiting thread sleeps, when given); wait; their timings."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy != "DEFAULT":  # DEFAULT: as sslbench sets it (sslbench.host)
        env["OMP_WAIT_POLICY"] = policy
    if spincount is not None:
        env["GOMP_SPINCOUNT"] = str(spincount)
    procs = []
    for i in range(copies):
        run_dir = root / f"{policy.lower()}-{spincount}-{copies}-{i}"
        command = [sys.executable, "-m", "sslbench", "pretrain", *overrides,
                   "progress_bar=false", f"run_dir={run_dir}"]  # fmt: skip
        log = open(root / f"{run_dir.name}.log", "w")  # noqa: SIM115 - closed below
        procs.append((run_dir, time.perf_counter(), subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT), log))  # fmt: skip
    rows = []
    for run_dir, start, proc, log in procs:
        code = proc.wait()
        wall = time.perf_counter() - start
        log.close()
        results = json.loads((run_dir / "results.json").read_text()) if code == 0 else {}
        rows.append({
            "copies": copies, "policy": policy, "exit": code, "wall_seconds": wall,
            "pretrain_seconds": results.get("pretrain_seconds"),
            "torch_threads": results.get("torch_threads"), "spincount": spincount,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--policies", nargs="+", default=["DEFAULT", "PASSIVE", "ACTIVE"])
    parser.add_argument("--out", type=Path, default=Path("shared_cores.jsonl"))
    parser.add_argument("--spincount", type=int, help="GOMP_SPINCOUNT for every copy")
    parser.add_argument("overrides", nargs="*", default=["experiment=demo", "epochs=1"])
    args = parser.parse_args()
    machine = {"cores": os.cpu_count(), "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    alone: dict[str, float] = {}
    print("policy   copies  training s (each)        wall s (each)        vs alone")
    with tempfile.TemporaryDirectory(prefix="sslbench-shared-") as tmp:
        for policy in args.policies:
            for copies in args.copies:
                rows = run_copies(copies, policy, args.overrides, Path(tmp), args.spincount)
                train = [r["pretrain_seconds"] or float("nan") for r in rows]
                if copies == 1:
                    alone[policy] = train[0]
                base = alone.get(policy)
                slowdown = [t / base for t in train] if base else []
                for row, factor in zip(rows, slowdown or [None] * len(rows), strict=True):
                    row.update(slowdown=factor, overrides=args.overrides, **machine)
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                walls = ", ".join(f"{r['wall_seconds']:.1f}" for r in rows)
                print(f"{policy:<8} {copies:>6}  "
                      f"{', '.join(f'{t:.1f}' for t in train):<24} {walls:<20} "
                      f"{', '.join(f'{f:.2f}x' for f in slowdown)}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
