"""What one run of the study costs: the study's protocol (ResNet-18, 224 px, batch 256) for a
few epochs on an Imagenette-sized folder of synthetic pictures, run as a grid.

    python benchmarks/study_time.py --epochs 2 --out study_time.jsonl

No dataset can be downloaded on the benchmark machines, so the pictures are synthetic: 9,469
train / 3,925 test JPEGs of 500x375 (the typical ImageNet picture, so the cache side is the
one the real imagenette2 gets), smooth enough to compress like photographs. Accuracies on them
mean nothing; time and memory are the study's, since the compute does not depend on content.

Each run goes through ``sslbench pretrain -m`` (a child process per run, as a user's grid).
Per run it writes one JSON line: the steady-state epoch time (the last epoch's
``epoch_seconds``), the first epoch's, peak GPU memory, and the 200-epoch estimate
(first epoch + 199 steady epochs), which docs/grids.md turns into the study's expected time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

#: imagenette2's split sizes (DESIGN.md §5).
TRAIN_IMAGES, TEST_IMAGES, CLASSES = 9469, 3925, 10


def _write_picture(args: tuple[Path, int, tuple[int, int]]) -> None:
    path, seed, (width, height) = args
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)  # smooth, like a photo
    picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    noisy = np.asarray(picture, dtype=np.int16) + rng.integers(-8, 9, size=(height, width, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_synthetic_folder(
    root: Path,
    train: int = TRAIN_IMAGES,
    test: int = TEST_IMAGES,
    picture: tuple[int, int] = (500, 375),
) -> Path:
    """``root/{train,val}/classK/*.jpg`` at imagenette2's sizes (once); ``picture``:
    (width, height), 500x375 for imagenette2, 213x160 for imagenette2-160."""
    done = root / ".complete"
    if done.exists():
        return root
    jobs = []
    for split, count in (("train", train), ("val", test)):
        for i in range(count):
            folder = root / split / f"class{i % CLASSES}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i:05d}.jpg", len(jobs), picture))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_picture, jobs, chunksize=256))
    done.touch()
    return root


def epoch_seconds(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as handle:
        return [float(r["epoch_seconds"]) for r in csv.DictReader(handle) if r.get("epoch_seconds")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/sslbench-synthetic-imagenette"))
    parser.add_argument("--runs", type=Path, default=Path("/tmp/sslbench-study-time"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("study_time.jsonl"))
    parser.add_argument(
        "--images",
        type=int,
        nargs=2,
        default=[TRAIN_IMAGES, TEST_IMAGES],
        metavar=("TRAIN", "TEST"),
        help="a smaller folder for a smoke test",
    )
    parser.add_argument(
        "--picture", type=int, nargs=2, default=[500, 375], metavar=("WIDTH", "HEIGHT"),
        help="synthetic picture size: 500 375 (imagenette2), 213 160 (imagenette2-160)",
    )  # fmt: skip
    parser.add_argument("--data-only", action="store_true", help="make the folder, run nothing")
    parser.add_argument(
        "--methods", default="simclr,simsiam,swav,byol,barlowtwins,vicreg,vicregl",
        help="comma list; the study's seven by default",
    )  # fmt: skip
    parser.add_argument(
        "--pipelines", default="simclr,orthogonality,lorot,dcl",
        help="the other pipelines, run with SimCLR (empty: none)",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="more KEY=VALUE for every run")
    args = parser.parse_args()

    from sslbench.cli import main as sslbench

    start = time.perf_counter()
    data = make_synthetic_folder(args.data, *args.images, picture=tuple(args.picture))
    print(f"synthetic folder ready in {time.perf_counter() - start:.0f} s", flush=True)
    if args.data_only:
        return
    common = ["experiment=study_imagenette", "dataset=folder", f"dataset.path={data}",
              f"epochs={args.epochs}", f"run_dir={args.runs}", *args.overrides]  # fmt: skip
    methods = [m for m in args.methods.split(",") if m]
    plain = [m for m in methods if m != "vicregl"]
    grids = [
        # every method with the baseline pipeline (VICRegL's α does not change its cost)
        *([[*common, f"method={','.join(plain)}", "transform=baseline"]] if plain else []),
        *([[*common, "method=vicregl", "method.alpha=0.75", "transform=baseline"]]
          if "vicregl" in methods else []),
        # the other pipelines, with SimCLR
        *([[*common, "method=simclr", f"transform={args.pipelines}"]] if args.pipelines else []),
    ]  # fmt: skip
    for grid in grids:
        sslbench(["pretrain", "-m", *grid])
        for results_file in sorted(args.runs.glob("*/results.json")):
            results = json.loads(results_file.read_text())
            if results.get("status") != "completed":
                continue
            epochs = epoch_seconds(results_file.parent)
            row = {
                "method": results["method"], "alpha": results.get("alpha"),
                "transform": results["transform"], "epochs": results["epochs"],
                "first_epoch_s": epochs[0], "steady_epoch_s": epochs[-1],
                "pretrain_seconds": results["pretrain_seconds"],
                "images_per_second": results["images_per_second"],
                "peak_gpu_gb": (results["peak_gpu_memory_bytes"] or 0) / 1e9,
                "estimate_200_epochs_min": (epochs[0] + 199 * epochs[-1]) / 60,
                "gpu": os.environ.get("GPU_NAME", ""), "date": time.strftime("%Y-%m-%d"),
            }  # fmt: skip
            key = (row["method"], row["alpha"], row["transform"])
            written = {
                (r["method"], r["alpha"], r["transform"])
                for r in map(json.loads, args.out.read_text().splitlines())
            } if args.out.exists() else set()  # fmt: skip
            if key not in written:
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
