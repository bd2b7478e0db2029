"""Export a finished run's backbone for use outside sslbench, and load it back.

``sslbench export run_dir=D`` writes the backbone's weights as safetensors (tensors only:
loading them runs no code, unlike a pickled checkpoint) and, beside them, a small JSON of
what rebuilds the network and feeds it (timm name, stem, input size, normalisation) and
where it came from (method, transform, dataset, config hash). Three key layouts:

- ``timm``: the keys of ``timm.create_model(name, num_classes=0, **timm_kwargs)``, which
  loads them strictly (standard stems only; ``timm_kwargs`` in the JSON: a ViT's
  ``img_size`` and ``patch_size``, nothing for a CNN);
- ``torchvision``: the keys of torchvision's model of the same name without ``fc.*``
  (the ResNets both libraries have, whose key names and shapes are the same);
- ``safetensors``: sslbench's backbone as it is, any variant (the small-image stem
  included), rebuilt by :func:`load_backbone`.

The request is checked before torch is imported (a wrong format or backbone fails in a
fraction of a second, as every sslbench command does), so torch, timm and safetensors are
imported inside the functions that need them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslbench.config import config_hash, load_run_config
from sslbench.errors import ExportError

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import Tensor, nn

#: The key layouts ``format=`` takes; the first is the default.
FORMATS = ("timm", "torchvision", "safetensors")

#: The ResNets that timm and torchvision both build under the same name, with the same
#: parameter names and shapes (checked again on every export, and in tests/tools/test_export.py).
TORCHVISION_RESNETS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)  # fmt: skip

#: The prefix of the evaluated backbone in a method's state_dict. BYOL's momentum copy is
#: ``backbone_target.``, which this prefix (with its dot) leaves out.
BACKBONE_PREFIX = "backbone."

WEIGHTS_SUFFIX = ".safetensors"


def default_out(run_dir: str | Path) -> Path:
    return Path(run_dir) / f"backbone{WEIGHTS_SUFFIX}"


def info_path(weights: str | Path) -> Path:
    """The JSON beside a weights file: the same stem, ``.json``."""
    return Path(weights).with_suffix(".json")


def check_request(cfg: DictConfig, fmt: str) -> None:
    """Refuse an export that the run's backbone cannot have, from its config alone."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
    name, small_stem = str(cfg.backbone.name), bool(cfg.backbone.small_stem)
    other = "use format=safetensors and load it with sslbench.load_backbone(path)"
    if small_stem and fmt in ("timm", "torchvision"):
        builder = f"timm.create_model('{name}')" if fmt == "timm" else "torchvision's ResNets"
        raise ExportError(
            f"format={fmt}: this run's backbone has the small-image stem "
            f"(backbone.small_stem=true: 3x3 stride-1 conv1, no max-pool), which "
            f"{builder} does not build; {other}"
        )
    if fmt == "torchvision" and architecture(name) not in TORCHVISION_RESNETS:
        raise ExportError(
            f"format=torchvision is for the ResNets torchvision has "
            f"({', '.join(TORCHVISION_RESNETS)}), not '{name}'; format=timm gives timm's "
            f"layout, or {other}"
        )


def architecture(name: str) -> str:
    """A timm name without its pretrained tag: ``resnet18.a1_in1k`` -> ``resnet18``."""
    return name.split(".", 1)[0]


def backbone_weights(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The evaluated backbone's tensors of a method's state_dict, prefix removed."""
    return {
        key[len(BACKBONE_PREFIX) :]: value
        for key, value in state_dict.items()
        if key.startswith(BACKBONE_PREFIX)
    }


def export_run(
    run_dir: str | Path, fmt: str = FORMATS[0], out: str | Path | None = None
) -> tuple[Path, Path]:
    """Export the backbone of the finished run in ``run_dir`` (its config.yaml and
    last.ckpt); returns the paths of the weights and of the JSON beside them."""
    if fmt not in FORMATS:  # said first: it needs no run folder
        raise ExportError(f"unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    config_file, checkpoint = run_dir / "config.yaml", run_dir / "last.ckpt"
    for needed in (config_file, checkpoint):
        if not needed.is_file():
            raise ExportError(
                f"run_dir={run_dir} has no {needed.name}; export needs a finished run's folder "
                "(config.yaml and last.ckpt)"
            )
    out = default_out(run_dir) if out is None else Path(out)
    if out.suffix != WEIGHTS_SUFFIX or not out.stem:
        raise ExportError(f"out must be a {WEIGHTS_SUFFIX} file name, got '{out}'")
    cfg = load_run_config(config_file)
    check_request(cfg, fmt)

    import safetensors.torch
    import torch

    from sslbench.run.evaluate import load_weights
    from sslbench.run.results import atomic_write_bytes, atomic_write_text

    weights = backbone_weights(load_weights(checkpoint))
    # With a standard stem (the small one was refused above for timm), the run's backbone
    # is timm.create_model(name, num_classes=0, **timm_kwargs): fitting it is fitting
    # timm's layout.
    backbone = _run_backbone(cfg)
    problem = key_mismatch(backbone.state_dict(), weights)
    if problem:
        raise ValueError(
            f"{checkpoint} was not written by {config_file} ({problem} among the backbone's "
            "tensors); it comes from another run"
        )
    if fmt == "torchvision":
        import torchvision

        with torch.device("meta"):  # names and shapes only: no memory, no initialisation
            reference = torchvision.models.get_model(architecture(cfg.backbone.name))
        expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
        problem = key_mismatch(expected, weights)
        if problem:  # a torchvision release that renamed or reshaped something
            raise ValueError(
                f"the backbone's tensors do not fit torchvision's "
                f"{architecture(cfg.backbone.name)}: {problem}; use format=timm or safetensors"
            )

    info = export_info(cfg, fmt, out, int(backbone.num_features), run_dir)
    text = json.dumps(info, indent=2) + "\n"
    # safetensors refuses non-contiguous tensors (channels_last runs store those) and
    # tensors sharing memory: a contiguous copy of each goes into the file.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
    # The JSON rides along in the file's metadata too, so the weights alone still say
    # what they are if the JSON is lost.
    data = safetensors.torch.save(tensors, metadata={"format": "pt", "sslbench": text})
    atomic_write_bytes(out, data)  # the weights first: a JSON never names missing weights
    atomic_write_text(info_path(out), text)
    return out, info_path(out)


def _run_backbone(cfg: DictConfig) -> nn.Module:
    """The run's backbone as sslbench builds it (random init), to check names and shapes."""
    from sslbench.nn.backbones import create_backbone

    return create_backbone(
        cfg.backbone.name,
        small_stem=cfg.backbone.small_stem,
        zero_init_last=cfg.backbone.zero_init_last,
        image_size=cfg.image_size,
        patch_size=cfg.backbone.get("patch_size"),
    )


def key_mismatch(expected: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> str | None:
    """None when ``weights`` has exactly the names and shapes of ``expected``; otherwise
    the first difference, in a few words (torch's own message lists every tensor)."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [k for k in expected if k in weights and expected[k].shape != weights[k].shape]
    if missing:
        problem = f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if missing[1:] else "")
    elif unexpected:
        problem = f"unexpected {unexpected[0]}" + (
            f" and {len(unexpected) - 1} more" if unexpected[1:] else ""
        )
    elif shapes:
        key = shapes[0]
        problem = f"{key} is {tuple(weights[key].shape)}, not {tuple(expected[key].shape)}"
    else:
        return None
    return problem


def export_info(
    cfg: DictConfig, fmt: str, out: Path, num_features: int, run_dir: Path
) -> dict[str, Any]:
    """The JSON beside the weights: what rebuilds the network, what it expects as input,
    and which run it comes from."""
    from omegaconf import OmegaConf

    import sslbench
    from sslbench.nn.backbones import timm_size_kwargs
    from sslbench.transforms import view_pipelines

    # The evaluation view's normalisation, taken from the pipeline exactly as the run's
    # model takes it (SSLMethod.pipeline: the first view variant's).
    transform = OmegaConf.to_container(cfg.transform, resolve=True)
    pipeline = view_pipelines(transform, cfg.image_size)[0]
    norm = pipeline.normalize
    return {
        "format": fmt,
        "weights": out.name,
        "timm_name": str(cfg.backbone.name),
        "num_classes": 0,
        # what else timm.create_model(timm_name, num_classes=0, **timm_kwargs) needs to
        # build this network (a ViT's img_size and patch_size; nothing for a CNN)
        "timm_kwargs": timm_size_kwargs(
            str(cfg.backbone.name), int(cfg.image_size), cfg.backbone.get("patch_size")
        ),
        "small_stem": bool(cfg.backbone.small_stem),
        "zero_init_last": cfg.backbone.zero_init_last,
        "torchvision_name": architecture(cfg.backbone.name) if fmt == "torchvision" else None,
        "num_features": num_features,
        "image_size": pipeline.size,
        # Input: RGB float in [0, 1], the centred square resized to image_size, then
        # (x - mean) / std per channel; null mean/std: the run did not normalise.
        "mean": None if norm is None else [float(m) for m in norm.mean],
        "std": None if norm is None else [float(s) for s in norm.std],
        "method": str(cfg.method.name),
        "transform": cfg.transform.get("name"),
        "dataset": str(cfg.dataset.name),
        "epochs": int(cfg.epochs),
        "seed": int(cfg.seed),
        "config_hash": config_hash(cfg),
        "run_dir": str(run_dir.resolve()),  # where it is now, which may not be where it ran
        "sslbench_version": sslbench.__version__,
    }


def read_info(weights: str | Path) -> dict[str, Any]:
    """The JSON beside an exported weights file, or the copy in its metadata if the JSON
    is gone."""
    path = info_path(weights)
    if path.is_file():
        return json.loads(path.read_text())
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        text = (handle.metadata() or {}).get("sslbench")
    if text is None:
        raise FileNotFoundError(
            f"no {path.name} beside {weights}, and the file does not say what it is; "
            "load_backbone reads what `sslbench export` writes"
        )
    return json.loads(text)


def load_backbone(path: str | Path, device: str = "cpu") -> nn.Module:
    """Rebuild an exported backbone (any format, any variant) and load its weights
    strictly; returns the network in eval mode.

    Its ``pretrained_cfg`` gets the run's input size and normalisation (and crop_pct 1:
    the run's evaluation view is the whole centred square), which is what
    ``timm.data.resolve_data_config(model=model)`` reads.
    """
    import safetensors.torch

    from sslbench.nn.backbones import create_backbone

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported backbone {path}")
    info = read_info(path)
    size = info.get("timm_kwargs") or {}  # exports from before ViTs have none
    if not isinstance(size, dict) or not all(
        key in ("img_size", "patch_size") and isinstance(value, int) and value > 0
        for key, value in size.items()
    ):
        raise ValueError(
            f"{info_path(path)}: timm_kwargs must map img_size and patch_size to positive "
            f"integers, got {size!r}"
        )
    model = create_backbone(
        info["timm_name"],
        small_stem=info["small_stem"],
        zero_init_last=info["zero_init_last"],
        image_size=size.get("img_size"),
        patch_size=size.get("patch_size"),
    )
    weights = safetensors.torch.load_file(str(path))
    problem = key_mismatch(model.state_dict(), weights)
    if problem:
        raise ValueError(
            f"{path} does not hold the {info['timm_name']} that its JSON describes: {problem}"
        )
    model.load_state_dict(weights, strict=True)
    mean, std, size = info.get("mean"), info.get("std"), info["image_size"]
    model.pretrained_cfg = {
        **getattr(model, "pretrained_cfg", {}),
        "input_size": (3, size, size),
        "mean": tuple(mean) if mean is not None else (0.0, 0.0, 0.0),
        "std": tuple(std) if std is not None else (1.0, 1.0, 1.0),
        "crop_pct": 1.0,
    }
    return model.to(device).eval()
