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
    python benchmarks/lightly_reference.py --vit --out benchmarks/results/lightly_vit.jsonl

``--vit`` is the ViT protocol: every method on the ViT of the ViT methods' learning runs (ViT-Ti
in 8-px patches at 32 px; lightly_recipes_vit.vit_run), by default the methods of
benchmarks/lightly_recipes_vit.py; a ViT is scored on the features its method names.

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
import lightly_recipes_vit
import lightly_recipes_vit_teacher
import numpy as np
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from lightly_differences import COMMON_DIFFERENCES, VS_LIGHTLY_BENCHMARK
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

_RECIPES = {
    **lightly_recipes.BUILDERS,
    **lightly_recipes_momentum.BUILDERS,
    **lightly_recipes_vit_teacher.BUILDERS,  # its dino: a ViT's recipe, momentum's for a ResNet
}
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


def runs(method: str, vit: bool = False) -> list[str]:
    """The method's learning-run overrides (tests/methods/test_methods_learn.py), less
    ``epochs=...``, which --epochs sets; with ``vit``, then the ViT protocol's."""
    overrides = method_class(method).learning_run_overrides
    overrides = (*overrides, *lightly_recipes_vit.vit_run(method)) if vit else overrides
    return [o for o in overrides if not o.startswith("epochs=")]


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
    elif opt.name in ("adam", "adamw"):
        betas = {} if opt.get("betas") is None else {"betas": tuple(opt.betas)}
        adam = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
        optimizer = adam(params, lr=lr, weight_decay=opt.weight_decay, **betas)
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
    # the ViT recipes' weight-decay schedule, clipping and frozen last layers; None: nothing
    before_optimizer_step = lightly_recipes_vit.before_optimizer_step(cfg, recipe, optimizer)
    epoch_losses = []
    step, total_steps = 0, len(loader) * cfg.epochs
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        total = 0.0
        for batch, items in enumerate(loader):
            # PILViews: (views, labels); IndexedImages: (images, aspect, labels), viewed here
            views = make_views(*items[:2]) if args.lightly_views == "sslbench" else items[0]
            views = [v.to(device) for v in views]
            progress = Progress(epoch, batch, step, total_steps)
            if recipe.before_step is not None:
                recipe.before_step(progress)
            loss = recipe.loss(views, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if before_optimizer_step is not None:
                before_optimizer_step(progress)
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
        *runs(method, args.vit),
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
        "overrides": [*BASE, f"method={method}", *runs(method, args.vit), *args.override],
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
        backbone = build(cfg).to(device)
        pool = lightly_recipes_vit.eval_pool(cfg, backbone)
        metrics = evaluate_backbone(backbone, cfg, data, pipeline, device, pool=pool)
        rows.append(_row(cfg, data, side, method, args, **_metrics(metrics), pool=pool))
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
    backbone = recipe.model["backbone"]
    pool = lightly_recipes_vit.eval_pool(cfg, backbone)  # a ViT: the features its method names
    metrics = evaluate_backbone(backbone, cfg, data, pipeline, device, pool=pool)
    return _row(
        cfg, data, "lightly", method, args, **_metrics(metrics),
        train_minutes=trained["train_seconds"] / 60, **trained,
        num_workers=args.num_workers, pool=pool,
        differences=[*COMMON_DIFFERENCES, *recipe.differences],
        vs_lightly_benchmark=getattr(recipe, "vs_lightly_benchmark", "")
        or VS_LIGHTLY_BENCHMARK[method],
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
        "--methods", nargs="+", choices=list(REGISTRY),
        help="default: every method with a lightly counterpart (not: "
        f"{', '.join(NOT_APPLICABLE)}) made for --backbone; with --vit, the ViT recipes'",
    )  # fmt: skip
    parser.add_argument(
        "--vit", action="store_true",
        help="the ViT protocol: every method on the ViT methods' learning-run ViT (ViT-Ti, "
        "8-px patches, 32 px)",
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
    if args.methods is None:  # without --vit, the methods made for ViTs only are left out
        args.methods = list(lightly_recipes_vit_teacher.BUILDERS) if args.vit else [
            m for m in METHODS if method_class(m).backbone_kinds != ("vit",)
        ]  # fmt: skip
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
            key = (cfg.backbone.name, cfg.backbone.get("patch_size"), cfg.backbone.small_stem,
                   len(data.train_indices), seed, lightly_recipes_vit.pool_name(cfg))  # fmt: skip
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
            # Random init depends on the backbone, the images and (a ViT) the pooled features.
            pool = next((r.get("pool") for r in sides["lightly"]), None)
            for side in ("random-lightly", "random-sslbench"):
                sides[side] = [r for r in group if r["side"] == side and r.get("pool") == pool]
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
