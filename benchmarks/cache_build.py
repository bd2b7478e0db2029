"""Decode-once cache build speed: one process vs several, JPEG draft on and off, on a folder
of real-sized JPEGs.

Writes ``--images`` JPEGs of ``--width`` x ``--height`` (smooth random pictures, quality 90,
like a photo folder), then builds the cache at ``--side`` with each ``--workers`` value and
each ``--jpeg-draft`` setting (``both``: off then on, side by side), the same images in a fresh
cache folder each time, and reports images per second. A draft only applies to pictures at
least 2 x ``--side`` on both sides (the defaults, 426 x 320 at 160, decode at 1/2). One JSON
line per build goes to ``--out``:

    python benchmarks/cache_build.py --images 2000 --workers 1 2 --jpeg-draft both
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
from sslbench.run.results import git_sha, versions


def write_jpegs(root: Path, n: int, width: int, height: int, classes: int = 10) -> None:
    """``n`` smooth random JPEGs in ``classes`` class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        picture.save(folder / f"{i:06d}.jpg", quality=90)


def build_seconds(folder: Path, side: int, workers: int, jpeg_draft: bool) -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        load_or_build(ImageFolder(folder), "train", side, cache_root=Path(cache),
                      progress=False, workers=workers, jpeg_draft=jpeg_draft)  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--width", type=int, default=426)  # imagenette2-320's typical 4:3
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--side", type=int, default=160)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--jpeg-draft", choices=["on", "off", "both"], default="both",
        help="dataset.jpeg_draft of the builds; both: off and on, side by side",
    )  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/cache_build.jsonl")
    args = parser.parse_args()
    drafts = {"on": [True], "off": [False], "both": [False, True]}[args.jpeg_draft]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_jpegs(folder, args.images, args.width, args.height)
        for workers in args.workers:
            speeds = []
            for draft in drafts:
                seconds = build_seconds(folder, args.side, workers, draft)
                row = {
                    "benchmark": "cache_build", "date": time.strftime("%Y-%m-%d"),
                    "cpus": os.cpu_count(), "images": args.images,
                    "picture": f"{args.width}x{args.height} JPEG", "side": args.side,
                    "workers": workers, "jpeg_draft": draft, "seconds": seconds,
                    "images_per_second": args.images / seconds,
                    "versions": versions(), "git_sha": git_sha(),
                }  # fmt: skip
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                speeds.append(f"draft {'on' if draft else 'off'}: {args.images} images in "
                              f"{seconds:.1f} s ({args.images / seconds:.0f} img/s)")  # fmt: skip
            print(f"workers={workers}: " + " | ".join(speeds), flush=True)


if __name__ == "__main__":
    main()
