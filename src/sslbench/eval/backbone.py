"""A frozen backbone's evaluation: the L-BFGS linear probe, kNN and the few-shot probes on
features computed once, and (when asked) lightly's SGD linear evaluation and fine-tuning;
each protocol's scores in fields of their own and its settings in ``evaluations``.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sslbench.data import subset_fingerprint
from sslbench.data.splits import RunData
from sslbench.eval.fields import knn_field
from sslbench.eval.probes import (
    FEW_SHOT_FRACTIONS,
    L2_GRID,
    extract_features,
    few_shot_probes,
    knn_accuracy,
    knn_k_used,
    linear_probe,
)
from sslbench.eval.supervised import (
    LabelledImages,
    SupervisedSettings,
    light_augmentation,
    train_and_score,
)
from sslbench.nn.backbones import TokenPooled
from sslbench.transforms import Pipeline


def evaluate_backbone(
    backbone: torch.nn.Module,
    cfg: DictConfig,
    data: RunData,
    pipeline: Pipeline,
    device: str,
    pool: str | None = None,
) -> dict[str, Any]:
    """The frozen backbone's scores, each protocol in fields of its own (results.json):
    the L-BFGS linear probe (``linear_top1``, top-5 above 5 classes), weighted kNN at the
    run's (k, T) (``knn_top1`` at the default; :func:`knn_field`), the few-shot probes, on
    features computed once; with ``eval.probe=sgd`` lightly's SGD linear evaluation
    (``sgd_linear_top1``), with ``eval.finetune`` a fine-tuned copy (``finetune_top1``).
    ``evaluations`` records each protocol's settings (runs scored otherwise are never
    pooled) and what a reader must know beside its numbers (its ``caveats``). ``pool``:
    a ViT's features, its class token (``cls``) or its patch tokens' mean (``avg``),
    recorded with every protocol's settings; None: the backbone's own pooled output."""
    if not cfg.eval.enabled or data.test is None or data.test_indices is None:
        reason = "disabled" if not cfg.eval.enabled else "the dataset has no labelled test split"
        return {"linear_top1": None, "linear_top5": None, "knn_top1": None,
                "probe": f"not evaluated: {reason}", "test_subset": None}  # fmt: skip
    from tqdm.auto import tqdm

    if pool is not None:
        backbone = TokenPooled(backbone, pool)
    splits = (("train", data.train, data.train_indices), ("test", data.test, data.test_indices))
    batches = sum(-(-len(idx) // cfg.eval.batch_size) for _, _, idx in splits)
    fits = 1 + (len(FEW_SHOT_FRACTIONS) if cfg.eval.few_shot else 0)
    bar = tqdm(total=batches + fits, desc="evaluating: features", unit="step",
               disable=not cfg.progress_bar, leave=False)  # fmt: skip
    features = {}
    for name, split, idx in splits:
        x = extract_features(
            backbone, split.images, split.aspect, idx, pipeline,
            batch_size=cfg.eval.batch_size, device=device, on_batch=lambda: bar.update(),
        )  # fmt: skip
        features[name] = (x, torch.from_numpy(split.labels[idx]).long())
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    bar.set_description("evaluating: linear probe")
    # the folds are drawn with the subset seed, not the run's: every run of a dataset has
    # its probe chosen on the same images
    selection = {
        "max_iter": cfg.eval.linear_max_iter, "folds": cfg.eval.linear_folds,
        "val_fraction": cfg.eval.linear_val_fraction, "seed": cfg.eval.subset_seed,
    }  # fmt: skip
    probe = linear_probe(train_x, train_y, test_x, test_y, data.num_classes, **selection)
    bar.update()
    k, temperature = cfg.eval.knn_k, cfg.eval.knn_temperature
    knn = knn_accuracy(train_x, train_y, test_x, test_y, data.num_classes,
                       k=k, temperature=temperature)  # fmt: skip
    k_used = knn_k_used(k, len(train_x))
    knn_caveats = []
    if k_used < k:
        knn_caveats.append(f"kNN: eval.knn_k={k} clamped to the {len(train_x)} train images")
    per_class = len(train_x) / max(1, data.num_classes)
    if k_used > per_class:  # most of the k votes then come from other classes
        knn_caveats.append(
            f"kNN: k={k_used} exceeds the ~{per_class:.0f} train images per class, so most "
            "votes come from other classes (a larger train set, or a smaller eval.knn_k, "
            "measures more)"
        )
    field = knn_field(k, temperature)
    results: dict[str, Any] = {
        "linear_top1": probe.top1,
        "linear_top5": probe.top5,
        "linear_l2": probe.l2,
        field: knn,
        "probe": probe.description,
        "test_subset": subset_fingerprint(data.test_indices, len(data.test)),
    }
    evaluations: dict[str, Any] = {
        "linear": {
            "protocol": "lbfgs",
            **selection,
            "folds": probe.folds,
            "l2_grid": list(L2_GRID),
            "l2": probe.l2,
            "selection_accuracy": probe.selection_accuracy,
            "train_images": len(train_x),
        },  # fmt: skip
        field: {
            "k": k,
            "k_used": k_used,
            "temperature": temperature,
            "train_images": len(train_x),
            "description": f"weighted kNN: k={k_used}, T={temperature}, cosine-weighted votes "
            "on the same features",
            "caveats": knn_caveats,
        },  # fmt: skip
    }
    if cfg.eval.few_shot:
        bar.set_description("evaluating: few-shot probes")
        few = few_shot_probes(train_x, train_y, test_x, test_y, data.num_classes,
                              seed=cfg.eval.subset_seed, max_iter=cfg.eval.linear_max_iter,
                              folds=cfg.eval.linear_folds,
                              val_fraction=cfg.eval.linear_val_fraction)  # fmt: skip
        results.update(few)
        evaluations["few_shot"] = {"protocol": "lbfgs", **selection,
                                   "images": few["few_shot_images"]}  # fmt: skip
        evaluations["few_shot"]["caveats"] = [
            f"few-shot {suffix.replace('pct', '%')} of the labels is {count} images "
            f"(~{count / max(1, data.num_classes):.0f} per class)"
            for suffix, count in few["few_shot_images"].items()
            if count < 20 * data.num_classes  # a handful per class: a noisy number
        ]
        bar.update(len(FEW_SHOT_FRACTIONS))
    bar.close()
    if cfg.eval.probe == "sgd" or cfg.eval.finetune:
        trained, settings = _trained_evaluations(backbone, cfg, data, pipeline, device)
        results.update(trained)
        evaluations.update(settings)
    if pool is not None:  # a ViT: which features every protocol scored
        evaluations = {name: {**settings, "pool": pool} for name, settings in evaluations.items()}
    results["evaluations"] = evaluations
    return results


def _trained_evaluations(
    backbone: torch.nn.Module,
    cfg: DictConfig,
    data: RunData,
    pipeline: Pipeline,
    device: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """lightly's SGD linear evaluation (``eval.probe=sgd``: ``sgd_linear_top1``, beside the
    L-BFGS probe's ``linear_top1``) and fine-tuning (``eval.finetune``), on crop+flip views
    (sslbench.eval.supervised); and the settings of each."""
    assert data.test is not None and data.test_indices is not None
    train = LabelledImages(data.train.images, data.train.aspect, data.train.labels,
                           data.train_indices)  # fmt: skip
    test = LabelledImages(data.test.images, data.test.aspect, data.test.labels, data.test_indices)
    transform = OmegaConf.to_container(cfg.transform, resolve=True)
    assert isinstance(transform, dict)
    views = light_augmentation(transform, pipeline.size)
    results: dict[str, Any] = {}
    kinds = [False] if cfg.eval.probe == "sgd" else []  # finetune: False (the SGD probe) / True
    kinds += [True] if cfg.eval.finetune else []
    used: dict[str, Any] = {}  # the settings of each, for results.json's evaluations
    for finetune in kinds:
        protocol = "finetune" if finetune else "sgd_linear"
        settings = SupervisedSettings(
            finetune=finetune, seed=cfg.seed,
            epochs=cfg.eval.finetune_epochs if finetune else cfg.eval.sgd_epochs,
            lr=cfg.eval.finetune_lr if finetune else cfg.eval.sgd_lr,
            batch_size=cfg.eval.finetune_batch_size if finetune else cfg.eval.sgd_batch_size,
            **(finetune_recipe(cfg.eval) if finetune else {}),
        )  # fmt: skip
        scored = train_and_score(backbone, data.num_classes, train, test, views, pipeline,
                                 settings, device, progress=cfg.progress_bar)  # fmt: skip
        if finetune:
            results.update(finetune_top1=scored["top1"], finetune_top5=scored["top5"],
                           finetune=scored["description"])  # fmt: skip
        else:
            results.update(sgd_linear_top1=scored["top1"], sgd_linear_top5=scored["top5"],
                           sgd_probe=scored["description"])  # fmt: skip
        recipe = finetune_recipe(cfg.eval, changed_only=True) if finetune else {}
        used[protocol] = {"epochs": settings.epochs, "lr": settings.lr,
                          "batch_size": settings.batch_size, **recipe}  # fmt: skip
    return results, used


#: The fine-tuning recipe's keys (eval.finetune_KEY) and their defaults, lightly's.
FINETUNE_RECIPE = {"optimizer": "sgd", "weight_decay": 0.0, "layer_decay": None,
                   "warmup_epochs": 0.0}  # fmt: skip


def finetune_recipe(evaluation: Any, changed_only: bool = False) -> dict[str, Any]:
    """The recipe's settings (absent from configs saved before them: the defaults); with
    ``changed_only`` those away from lightly's, as results.json's evaluations record them
    (so a run scored before they existed keeps the settings it is compared by)."""
    recipe = {key: evaluation.get(f"finetune_{key}", default)
              for key, default in FINETUNE_RECIPE.items()}  # fmt: skip
    if changed_only:
        return {k: v for k, v in recipe.items() if v != FINETUNE_RECIPE[k]}
    return recipe
