"""lightly's own way of training each method beside sslbench's, same budget, same probe.

Two sides, trained from the same resolved sslbench config (``experiment=demo`` plus each
method's ``learning_run_overrides``, the slow test's settings, with --backbone, --epochs,
--max-train, ...):

- ``lightly``: what lightly's benchmark (docs/.../imagenette_benchmark.py, the study's base)
  does: torchvision's ``resnet18()`` without its classifier (for ``--backbone resnet18``;
  other names use sslbench's timm model), lightly's per-image transforms on PIL images in a
  ``DataLoader``, lightly's heads, losses, momentum updates and memory banks, every view
  through the networks on its own, ``CosineWarmupScheduler``, a plain PyTorch loop in
  float32 (one recipe per method: benchmarks/lightly_recipes.py and
  lightly_recipes_momentum.py);
- ``sslbench``: ``sslbench pretrain`` of that config, at its defaults.

Both use sslbench's cache, its seeded subsets (the same images, the same test images for
every seed) and its ``evaluate_backbone`` (linear probe and kNN). Each random-init backbone
(torchvision's and sslbench's) is scored too. One JSON line per run goes to --out; the
summary compares the sides over seeds. The issue's protocol (standard stem, 32 px, batch
128, 4 epochs, 10,000 Fashion-MNIST images) is the default:

    python benchmarks/lightly_reference.py --backbone resnet18 --seeds 0 1 2
    python benchmarks/lightly_reference.py --backbone resnet10t --seeds 0 1 2 --sides lightly
    python benchmarks/lightly_reference.py --summarize benchmarks/results/lightly_reference_v2.jsonl

Every registered method with a lightly counterpart has a recipe; one without (supervised)
is named as not applicable and skipped. VICRegL needs feature maps larger than 1x1: its
overrides keep the small stem at 32 px (and 1,000 images), on both sides.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightly_recipes
import lightly_recipes_momentum
import numpy as np
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from lightly_recipes import (
    Progress,
    Recipe,
    lightly_backbone,
    sslbench_backbone,
    sslbench_two_views,
)
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from sslbench.config import compose
from sslbench.data.dataset import IndexedImages, collate_batch
from sslbench.data.splits import RunData, open_data
from sslbench.eval.backbone import evaluate_backbone
from sslbench.methods import METHODS as REGISTRY
from sslbench.methods import method_class
from sslbench.methods.banks import check_bank_sizes
from sslbench.run.pretrain import pretrain
from sslbench.run.results import git_sha, versions
from sslbench.tools.lightly_views import PILViews
from sslbench.transforms import Pipeline

_RECIPES = {**lightly_recipes.BUILDERS, **lightly_recipes_momentum.BUILDERS}
#: One recipe per registered method with a lightly counterpart, in the registry's order.
BUILDERS: dict[str, Callable[[DictConfig, nn.Module], Recipe]] = {
    name: _RECIPES[name] for name in REGISTRY if name in _RECIPES
}
METHODS = tuple(BUILDERS)
#: Registered methods that lightly has nothing to compare with.
NOT_APPLICABLE = {
    "supervised": "trains on the labels (sslbench's upper bound): lightly's benchmarks have "
    "no counterpart",
}

#: sslbench's settings for these short runs: the slow test's base (its data and backbone
#: settings come from the options here) and each method's ``learning_run_overrides``.
BASE = ["experiment=demo", "progress_bar=false"]


def runs(method: str) -> list[str]:
    """The method's learning-run overrides (tests/methods/test_methods_learn.py), less
    ``epochs=...``, which --epochs sets."""
    overrides = method_class(method).learning_run_overrides
    return [o for o in overrides if not o.startswith("epochs=")]


#: What differs between the two sides for every method (per-method ones are added below).
COMMON_DIFFERENCES = [
    "initial weights: lightly's side builds torchvision's resnet18() (lightly's benchmark), "
    "sslbench timm's resnet18 with zero_init_last=False: the same distributions "
    "(tests/nn/test_backbones.py), other draws; other backbone names: the same timm model",
    "augmentation: lightly's per-image torchvision/PIL ops on the 28-px cached images in the "
    "DataLoader instead of sslbench's batched tensor ops; same parameters, but torchvision's "
    "crop boxes are whole pixels of the 28-px image (sslbench: sub-pixel boxes, roi_align) "
    "and PIL rounds to uint8 between the colour-jitter steps",
    "random draws: torch's global generator seeded once (sslbench: a generator per step); same "
    "distributions, other draws; the batches are shuffled by the same seeded sampler",
    "precision: float32 on lightly's side; sslbench's default (bf16-mixed on a GPU, float32 "
    "on a CPU)",
    "lr: lightly's CosineWarmupScheduler(end_value=0) stepped every optimiser step; the same "
    "warm-up, but the cosine reaches 0 at the last step, progress (s-w)/(T-w-1), where "
    "sslbench's uses (s-w)/(T-w)",
    "a plain PyTorch loop: no Lightning, no collapse monitor, no non-finite checks",
]


#: How these settings differ from lightly's own Imagenette benchmark (context, not a
#: difference from sslbench): its numbers come from torchvision resnet18 at 128 px, batch 256,
#: 200 or 800 epochs, the lr schedule stepped per epoch.
VS_LIGHTLY_BENCHMARK = {
    "simclr": "NTXentLoss T=0.2 (the demo's) vs 0.5; colour-jitter strength 1.0 vs 0.5",
    "simsiam": "lr 0.12 vs 0.06; SimCLRTransform vs SimSiamTransform",
    "byol": "SimCLRTransform vs BYOLTransform (asymmetric blur and solarisation)",
    "barlowtwins": "LARS 0.2*b/256, wd 1.5e-6, biases and norms excluded vs SGD 0.06*b/256, "
    "wd 5e-4; SimCLRTransform vs BYOLTransform",
    "vicreg": "VICRegProjectionHead (the same 3 layers as its BarlowTwinsProjectionHead); "
    "warm-up 0.3 of the epochs vs 20 of 200; SimCLRTransform vs VICRegTransform",
    "swav": "SimCLR jitter strength 1.0 vs 0.5",
    "vicregl": "2 local views vs none (n_local_views=0); small stem; sslbench's SimCLR crop "
    "and jitter vs VICRegLTransform's defaults (jitter p 1.0, strength 0.5, blur, solarisation)",
    "tico": "warm-up 0.3 of the epochs vs 20 of 200; SimCLRTransform vs BYOLTransform",
    "fastsiam": "lr 0.12 vs 0.06 (SimSiam's overrides); FastSiamTransform at SimCLR's jitter "
    "(0.8, 0.8, 0.8, 0.2) and crop scale 0.08 vs its SimSiam defaults (0.4, 0.4, 0.4, 0.1; "
    "scale 0.2)",
    "simclr_dcl": "DCLLoss T=0.2 (the demo's) vs 0.1; colour-jitter strength 1.0 vs 0.5",
    "simclr_dclw": "DCLWLoss T=0.2 (the demo's) vs 0.1 (sigma 0.5 in both); colour-jitter "
    "strength 1.0 vs 0.5",
    "swav_queue": "the queues join the loss from epoch 1 (its learning-run override) vs 15; "
    "SimCLR jitter strength 1.0 vs 0.5",
    "mocov2": "NTXentLoss T=0.2 (the demo's) vs 0.1; memory bank 2048 vs 4096; colour-jitter "
    "strength 1.0 vs 0.5",
    "mocov3": "not in lightly's benchmark: the official ResNet code's settings (LARS 0.6*b/256, "
    "wd 1e-6, biases and norms excluded, T=1.0, momentum 0.99 to 1 by a cosine), warm-up 0.3 "
    "of the epochs vs 10 of 100; SimCLRTransform vs the official code's BYOL augmentation",
    "dino": "2 local crops vs 6; the demo's SimCLR crops (scale 0.08, no blur at 32 px, no "
    "solarisation) vs DINOTransform's BYOL-style global crops (scale 0.4, blur 1.0 and 0.1, "
    "solarisation 0.2); colour-jitter strength 1.0 vs 0.5",
    "nnclr": "NTXentLoss T=0.2 (the demo's) vs 0.5; support set 2048 vs 4096; colour-jitter "
    "strength 1.0 vs 0.5",
    "smog": "bank 2048 vs 10,000; resets every 30 steps vs 300; SimCLRTransform vs "
    "SMoGTransform (BYOL-style views, crop scale 0.2, jitter always, strength 0.5)",
}


# -- training: sslbench's optimiser settings, lightly's scheduler, a plain loop --------------
def build_optimizer(cfg: DictConfig, model: nn.Module, steps_per_epoch: int, epochs: int):
    """sslbench's optimiser (name, lr scaled by batch / reference batch, weight decay, biases
    and norms excluded where asked) with lightly's cosine warm-up schedule per step."""
    opt = cfg.method.optimizer
    lr = opt.lr * (cfg.batch_size / opt.reference_batch_size if opt.reference_batch_size else 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if opt.exclude_bias_and_norm:  # no decay and (LARS) no trust ratio on 1-d parameters
        params: Any = [
            {"params": [p for p in trainable if p.ndim > 1]},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ]
    else:
        params = trainable
    if opt.name == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    elif opt.name == "adam":
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=opt.weight_decay)
    elif opt.name == "lars":
        optimizer = LARS(params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    else:
        raise ValueError(f"optimizer {opt.name} not handled here")
    if opt.schedule != "cosine":
        raise ValueError(f"schedule {opt.schedule} not handled here")
    total_steps = steps_per_epoch * epochs
    warmup_steps = int(opt.warmup_epochs * steps_per_epoch)  # as sslbench rounds it
    scheduler = CosineWarmupScheduler(optimizer, warmup_steps, total_steps, end_value=0.0)
    return optimizer, scheduler, {"name": opt.name, "lr": lr, "weight_decay": opt.weight_decay,
                                  "momentum": opt.momentum, "warmup_steps": warmup_steps,
                                  "total_steps": total_steps,
                                  "exclude_bias_and_norm": opt.exclude_bias_and_norm}  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(recipe: Recipe, cfg: DictConfig, data: RunData, args, device: str) -> dict[str, Any]:
    """The training loop alone; returns its timing, losses and optimiser settings. With
    ``--lightly-views sslbench`` the views are sslbench's (its batched tensor ops), made in
    the loop from the same batches: everything else stays lightly's."""
    if args.lightly_views == "sslbench":
        dataset = IndexedImages(data.train, data.train_indices)  # (images, aspect, labels)
        make_views = sslbench_two_views(cfg)
    else:
        dataset = PILViews(data.train.images, data.train.labels, data.train_indices,
                           recipe.transform)  # fmt: skip
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        collate_fn=collate_batch,  # IndexedImages' ready-made batches; PILViews' items stacked
        # sslbench's sampler seed: the same images in the same batches
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    model = recipe.model.to(device).train()
    optimizer, scheduler, opt_info = build_optimizer(cfg, model, len(loader), cfg.epochs)
    epoch_losses = []
    step, total_steps = 0, len(loader) * cfg.epochs
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        total = 0.0
        for batch, items in enumerate(loader):
            # PILViews: (views, labels); IndexedImages: (images, aspect, labels), viewed here
            views = make_views(*items[:2]) if args.lightly_views == "sslbench" else items[0]
            views = [v.to(device) for v in views]
            if recipe.before_step is not None:
                recipe.before_step(Progress(epoch, batch, step, total_steps))
            loss = recipe.loss(views, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            total += float(loss.detach())  # SwaVLoss gives shape (1,)
        epoch_losses.append(total / len(loader))
        print(f"  epoch {epoch}: mean loss {epoch_losses[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - start
    images = len(loader) * cfg.batch_size * cfg.epochs
    return {"train_seconds": seconds, "images_per_second": images / seconds,
            "steps_per_epoch": len(loader), "epoch_losses": epoch_losses,
            "optimizer": opt_info}  # fmt: skip


# -- the run ---------------------------------------------------------------------------------
def method_config(method: str, args: argparse.Namespace, seed: int) -> DictConfig:
    """sslbench's resolved config of one method's run (the slow test's settings)."""
    return compose([
        *BASE,
        f"backbone={args.backbone}",
        f"dataset.max_train={args.max_train}",
        f"dataset.max_test={args.max_test}",
        f"method={method}",
        *runs(method),
        *args.override,
        f"epochs={args.epochs}",
        f"batch_size={args.batch_size}",
        f"seed={seed}",
        f"runs_root={args.runs_root}",
    ])  # fmt: skip


def _row(cfg: DictConfig, data: RunData, side: str, method: str, args, **values) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.machine()
    return {
        "benchmark": "lightly_reference",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{name}, {torch.get_num_threads()} torch threads, {device}",
        "side": side,
        "method": method,
        "backbone": cfg.backbone.name,
        "small_stem": cfg.backbone.small_stem,
        "overrides": [*BASE, f"method={method}", *runs(method), *args.override],
        "variant": " ".join(
            [*args.override]
            + (["lightly side with sslbench's views"] if args.lightly_views == "sslbench" else [])
        ),
        "method_config": OmegaConf.to_container(cfg.method, resolve=True),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "train_images": int(len(data.train_indices)),
        "test_images": int(len(data.test_indices)),
        **values,
        "versions": versions(),
        "git_sha": git_sha(),
    }


def run_random_init(cfg: DictConfig, data: RunData, args, method: str) -> list[dict]:
    """The probe on both sides' backbones at random init, seeded as their runs are."""
    rows = []
    pipeline = Pipeline(OmegaConf.to_container(cfg.transform.ops), cfg.image_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for side, build in (
        ("random-lightly", lightly_backbone),
        ("random-sslbench", sslbench_backbone),
    ):
        seed_everything(cfg.seed)
        metrics = evaluate_backbone(build(cfg).to(device), cfg, data, pipeline, device)
        rows.append(_row(cfg, data, side, method, args, **_metrics(metrics)))
    return rows


def _metrics(metrics: dict) -> dict:
    keep = ("linear_top1", "linear_top5", "knn_top1", "probe", "test_subset")
    return {key: metrics[key] for key in keep}


def run_lightly(cfg: DictConfig, data: RunData, args, method: str) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seed_everything(cfg.seed)
    # The bank sizes that sslbench's run refuses are refused here too.
    check_bank_sizes(cfg, method_class(method).bank_keys, len(data.train_indices))
    recipe = BUILDERS[method](cfg, lightly_backbone(cfg))
    trained = train(recipe, cfg, data, args, device)
    pipeline = Pipeline(OmegaConf.to_container(cfg.transform.ops), cfg.image_size)
    metrics = evaluate_backbone(recipe.model["backbone"], cfg, data, pipeline, device)
    return _row(
        cfg, data, "lightly", method, args, **_metrics(metrics),
        train_minutes=trained["train_seconds"] / 60, **trained,
        num_workers=args.num_workers,
        differences=[*COMMON_DIFFERENCES, *recipe.differences],
        vs_lightly_benchmark=VS_LIGHTLY_BENCHMARK[method],
    )  # fmt: skip


def run_sslbench(cfg: DictConfig, data: RunData, args, method: str) -> dict:
    results = pretrain(cfg)
    return _row(
        cfg, data, "sslbench", method, args, **_metrics(results),
        train_minutes=results["pretrain_seconds"] / 60,
        images_per_second=results["images_per_second"], run_dir=str(cfg.run_dir),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods", nargs="+", choices=list(REGISTRY), default=list(METHODS),
        help="default: every method with a lightly counterpart (not: "
        f"{', '.join(NOT_APPLICABLE)})",
    )  # fmt: skip
    parser.add_argument("--sides", nargs="+", choices=("lightly", "sslbench", "random"),
                        default=["lightly", "sslbench", "random"])  # fmt: skip
    parser.add_argument(
        "--backbone", default="resnet18", help="resnet18: torchvision's for lightly"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--max-train", type=int, default=10_000, help="vicregl keeps its overrides' 1000"
    )
    parser.add_argument("--max-test", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-workers", type=int, default=0, help="lightly's DataLoader workers")
    parser.add_argument("--runs-root", default="/tmp/sslbench-lightly-reference")
    parser.add_argument("--out", default="benchmarks/results/lightly_reference_v2.jsonl")
    parser.add_argument("--summarize", nargs="+", metavar="JSONL", help="only print the tables")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="an sslbench override for both sides, after the method's own (a diagnostic "
        "variant, e.g. method.local_views.count=0; its rows get their own table)",
    )  # fmt: skip
    parser.add_argument(
        "--lightly-views", choices=("lightly", "sslbench"), default="lightly",
        help="sslbench: lightly's side trains on sslbench's views (its batched tensor ops) "
        "instead of lightly's per-image transforms, to tell an augmentation gap from a "
        "training one; two-view methods only; its rows get their own table",
    )  # fmt: skip
    args = parser.parse_args()
    if args.lightly_views == "sslbench":
        multi = [m for m in args.methods if method_class(m).lightly_transform != "pipeline"]
        if multi:
            parser.error(
                f"--lightly-views sslbench is for two-view methods; not {', '.join(multi)}"
            )
    if args.summarize:
        print_summary(
            [json.loads(line) for f in args.summarize for line in open(f) if line.strip()]
        )
        return
    warnings.filterwarnings("ignore", message=".*get_image_size.*")  # torchvision v2 shim
    for method in [m for m in args.methods if m not in BUILDERS]:
        reason = NOT_APPLICABLE.get(method, "no recipe in benchmarks/lightly_recipes*.py yet")
        print(f"{method}: not applicable, skipped: {reason}", flush=True)
    args.methods = [m for m in args.methods if m in BUILDERS]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    scored_random: set[tuple] = set()
    for seed in args.seeds:  # seeds outermost: an interrupted run still has every method once
        for method in args.methods:
            cfg = method_config(method, args, seed)
            data = open_data(cfg, progress=False)
            todo = []
            key = (cfg.backbone.small_stem, len(data.train_indices), seed)
            if "random" in args.sides and key not in scored_random:
                scored_random.add(key)
                todo.append(
                    lambda cfg=cfg, data=data, m=method: run_random_init(cfg, data, args, m)
                )
            if "lightly" in args.sides:
                todo.append(lambda cfg=cfg, data=data, m=method: [run_lightly(cfg, data, args, m)])
            if "sslbench" in args.sides:
                todo.append(lambda cfg=cfg, data=data, m=method: [run_sslbench(cfg, data, args, m)])
            for job in todo:
                try:
                    done = job()
                except Exception as err:  # one failed run must not end the comparison
                    print(f"{method} seed {seed}: failed: {type(err).__name__}: {err}", flush=True)
                    continue
                for row in done:
                    rows.append(row)
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(f"{row['side']:>16} {method:<12} seed {seed}: linear "
                          f"{row['linear_top1']:.3f} kNN {row['knn_top1']:.3f}"
                          + (f", {row['train_minutes']:.2f} min" if "train_minutes" in row else ""),
                          flush=True)  # fmt: skip
    print_summary(rows)


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.3f}±{(max(values) - min(values)) / 2:.3f}"


def print_summary(rows: Sequence[dict]) -> None:
    """Per backbone and method: each side's mean ± half the range over seeds, and whether
    sslbench is at or above lightly's way within the seed-to-seed spread (the larger of the
    two sides' ranges)."""

    def key(row: dict) -> tuple:
        return row["backbone"], row["small_stem"], row["train_images"], row.get("variant", "")

    for backbone, small_stem, images, variant in sorted({key(r) for r in rows}):
        group = [r for r in rows if key(r) == (backbone, small_stem, images, variant)]
        stem = "small stem" if small_stem else "standard stem"
        print(
            f"\n{backbone}, {stem}, {images} train images{', ' + variant if variant else ''} "
            f"(mean ± half the range over seeds; verdict: sslbench ≥ lightly − spread)"
        )
        print(
            "| method | seeds | linear: lightly / sslbench | kNN: lightly / sslbench | "
            "verdict | random init linear / kNN (lightly's side; sslbench's) |"
        )
        print("|---|---|---|---|---|---|")
        for method in METHODS:
            sides = {side: [r for r in group if r["method"] == method and r["side"] == side]
                     for side in ("lightly", "sslbench")}  # fmt: skip
            # Random init depends on the backbone and the images only, not on the method.
            for side in ("random-lightly", "random-sslbench"):
                sides[side] = [r for r in group if r["side"] == side]
            # Compare like with like: only the seeds that both sides have finished.
            seeds = sorted(
                {r["seed"] for r in sides["lightly"]} & {r["seed"] for r in sides["sslbench"]}
            )
            for side in ("lightly", "sslbench"):
                sides[side] = [r for r in sides[side] if r["seed"] in seeds]
            if not seeds:
                continue
            cells, verdicts = [], []
            for metric in ("linear_top1", "knn_top1"):
                lightly = [r[metric] for r in sides["lightly"]]
                ours = [r[metric] for r in sides["sslbench"]]
                spread = max(max(lightly) - min(lightly), max(ours) - min(ours))
                gap = sum(ours) / len(ours) - sum(lightly) / len(lightly)
                cells.append(f"{_spread(lightly)} / {_spread(ours)}")
                verdicts.append("ok" if gap >= -spread else f"short by {-gap:.3f}")
            random = []
            for side in ("random-lightly", "random-sslbench"):
                if sides[side]:
                    linear = [r["linear_top1"] for r in sides[side]]
                    knn = [r["knn_top1"] for r in sides[side]]
                    random.append(f"{_spread(linear)} / {_spread(knn)}")
            print(
                f"| {method} | {','.join(map(str, seeds))} | {cells[0]} | {cells[1]} | "
                f"linear {verdicts[0]}, kNN {verdicts[1]} | {'; '.join(random) or '-'} |"
            )


if __name__ == "__main__":
    main()
