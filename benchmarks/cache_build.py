"""Decode-once cache build speed: one process vs several, on a folder of real-sized JPEGs.

Writes ``--images`` JPEGs of ``--width`` x ``--height`` (smooth random pictures, quality 90,
like a photo folder), then builds the cache at ``--side`` with each ``--workers`` value, in a
fresh cache folder each time, and reports images per second. One JSON line per build goes
to ``--out``:

    python benchmarks/cache_build.py --images 2000 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sslbench.data import ImageFolder, load_or_build
from sslbench.results import git_sha, versions


def write_jpegs(root: Path, n: int, width: int, height: int, classes: int = 10) -> None:
    """``n`` smooth random JPEGs in ``classes`` class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        picture.save(folder / f"{i:06d}.jpg", quality=90)


def build_seconds(folder: Path, side: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        load_or_build(ImageFolder(folder), "train", side, cache_root=Path(cache),
                      progress=False, workers=workers)  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--width", type=int, default=426)  # imagenette2-320's typical 4:3
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--side", type=int, default=160)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="benchmarks/results/cache_build.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_jpegs(folder, args.images, args.width, args.height)
        for workers in args.workers:
            seconds = build_seconds(folder, args.side, workers)
            row = {
                "benchmark": "cache_build", "date": time.strftime("%Y-%m-%d"),
                "cpus": os.cpu_count(), "images": args.images,
                "picture": f"{args.width}x{args.height} JPEG", "side": args.side,
                "workers": workers, "seconds": seconds, "images_per_second": args.images / seconds,
                "versions": versions(), "git_sha": git_sha(),
            }  # fmt: skip
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(f"workers={workers}: {args.images} images in {seconds:.1f} s "
                  f"({args.images / seconds:.0f} img/s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
