"""Evaluating a run's backbone again (``sslbench eval``), from its checkpoint or freshly
initialised, and merging the scores into its results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from sslbench.data.splits import RunData, open_data
from sslbench.eval.backbone import evaluate_backbone
from sslbench.host import set_torch_threads
from sslbench.methods import SSLMethod
from sslbench.nn.backbones import has_tokens
from sslbench.run.build import accelerator_of, build_method, out_of_gpu_memory
from sslbench.run.results import gather_caveats, read_results, write_results


def evaluate_run(run_dir: str | Path, cfg: DictConfig, random_init: bool = False) -> dict[str, Any]:
    """Evaluate the backbone of a finished run (its ``last.ckpt``), or with
    ``random_init`` the same backbone freshly initialised with the run's seed."""
    run_dir = Path(run_dir)
    set_torch_threads(cfg.get("threads"))
    pl.seed_everything(cfg.seed, verbose=False)
    accelerator = accelerator_of(cfg)
    device = "cuda" if accelerator == "gpu" else "cpu"
    model = build_method(cfg, accelerator)
    if not random_init:
        checkpoint = run_dir / "last.ckpt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no checkpoint {checkpoint}; was the run completed?")
        try:
            model.load_state_dict(load_weights(checkpoint))
        except RuntimeError as err:  # torch lists every mismatched tensor, one per line
            details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            raise ValueError(
                f"{checkpoint} was not written by this run's config.yaml "
                f"({details[0] if details else err}); it comes from another run"
            ) from None
    data = open_data(cfg, progress=cfg.progress_bar)
    return evaluate_model(model, cfg, data, device)


def evaluate_model(model: SSLMethod, cfg: DictConfig, data: RunData, device: str) -> dict[str, Any]:
    pool = feature_pool(cfg, model)
    try:
        return evaluate_backbone(
            model.backbone.to(device), cfg, data, model.pipeline, device, pool=pool
        )
    except torch.OutOfMemoryError as err:
        raise out_of_gpu_memory(
            "extracting features", "eval.batch_size", cfg.eval.batch_size
        ) from err


def feature_pool(cfg: DictConfig, model: SSLMethod) -> str | None:
    """The features a ViT is evaluated on: ``eval.pool``, or the method's own
    (``eval_pool``); None for a backbone without tokens (build_method refused eval.pool)."""
    if not has_tokens(model.backbone):
        return None
    return cfg.eval.get("pool") or model.eval_pool


def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (see :func:`read_checkpoint`)."""
    return read_checkpoint(checkpoint)["state_dict"]


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """A Lightning checkpoint, read with ``weights_only=True``: a run folder may come from
    anyone, and a full unpickle of its checkpoint could run any code."""
    import pickle

    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{checkpoint} holds more than weights (pickled objects, which could run code); "
            "sslbench reads only tensors and plain values from a checkpoint"
        ) from None


def update_results(run_dir: str | Path, update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a run's results.json (atomically)."""
    results = read_results(run_dir)
    earlier = results.get("evaluations")
    results.update(update)
    if isinstance(earlier, dict) and "evaluations" in update:
        # each protocol's settings: those evaluated now replace theirs, the others stay
        results["evaluations"] = {**earlier, **update["evaluations"]}
    results["caveats"] = gather_caveats(results)
    write_results(run_dir, results)
    return results
