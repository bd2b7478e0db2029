"""Backbones: any timm model by name, used as a feature extractor.

``create_backbone`` returns the model without its classifier (``num_classes=0``), so its
output is the pooled feature vector of size ``model.num_features``. For the ResNet family
it can swap in a small-image stem (3×3 convolution at stride 1, no max-pool), the usual
choice for images of 64 px or less, where the standard stem's 4× downsampling throws most
of the picture away.

Initialisation follows the reference protocol: the study (through lightly's benchmark) built
torchvision's ``resnet18()``, whose residual branches end in a batch norm with weight 1. timm's
ResNets zero that weight by default (``zero_init_last``, Goyal et al. 2017), which makes every
block start as its shortcut: measured on Fashion-MNIST at random init, timm's default gives a
ResNet-18 linear probe of 0.258, torchvision's init 0.816. ``zero_init_last=False`` (the
default here) gives timm's ResNets torchvision's parameter statistics.

Models that timm builds for one input size (ViTs, DeiT, Swin, EVA: their pretrained config
says ``fixed_input_size``) get the run's ``image_size`` through timm's own ``img_size``
argument, and ``patch_size`` where given (a ViT-S/16 made for 224 px becomes a ViT-S/4 for
32 px): the position embeddings are built for the run's grid of patches, as the recipes
for small images do, rather than the model failing at its first forward pass.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import timm
import torch
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sslbench.errors import BackboneError


def create_backbone(
    name: str,
    *,
    small_stem: bool = False,
    zero_init_last: bool | None = False,
    image_size: int | None = None,
    patch_size: int | None = None,
    any_size: bool = False,
) -> nn.Module:
    """Build timm model ``name`` from scratch (random init) without its classifier.

    Args:
        name: any name of ``timm.list_models()``, e.g. ``resnet18``.
        small_stem: ResNets only: first convolution 3×3 stride 1 and no max-pool.
        zero_init_last: for the families that have the option (ResNets, RegNets, ...):
            whether the last batch norm of each residual branch starts at 0 (timm's default)
            or at 1 (torchvision's, the reference). None keeps the model's own default;
            False is accepted by every model (the others have no such initialisation).
        image_size: the side of the images the run feeds it: a model built for one input
            size (a ViT's patch embedding) is built for this one; one that cannot be (or
            whose patches do not tile it) raises BackboneError here, rather than timm's
            assertion at the first forward pass.
        patch_size: models with a patch embedding only: the side of a patch in pixels
            (None: the model's own, 16 for ``vit_small_patch16_224``).
        any_size: a model built for one size also takes images of other sizes (timm's
            ``dynamic_img_size``: the position embeddings are interpolated to the input's
            grid of patches, and a side that is not a multiple of the patch is padded to
            one), as the smaller local crops of multi-crop methods (DINO) need.
            No effect at ``image_size``, nor on the parameters (an export loads without it).

    Returns:
        A module mapping images (N, 3, H, W) to features (N, model.num_features).
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise BackboneError(f"unknown backbone '{name}': not a timm model name{hint}")
    size: dict[str, Any] = dict(timm_size_kwargs(name, image_size, patch_size))
    if any_size and builds_for_one_size(name):
        # a local crop whose side is not a multiple of the patch (14 px in 8-px patches)
        # is padded to the next one (timm's dynamic_img_pad), not refused
        size["dynamic_img_size"] = size["dynamic_img_pad"] = True
    model = _create(name, zero_init_last, size)
    if image_size is not None:
        _check_input_size(model, name, image_size)
    if small_stem:
        _use_small_stem(model, name)
    return model


def builds_for_one_size(name: str) -> bool:
    """Whether timm builds model ``name`` for one input size (its pretrained config's
    ``fixed_input_size``: ViTs, DeiT, Swin, EVA, ...), so that it takes ``img_size``."""
    pretrained = timm.get_pretrained_cfg(name)
    return bool(getattr(pretrained, "fixed_input_size", False))


def timm_size_kwargs(name: str, image_size: int | None, patch_size: int | None) -> dict[str, int]:
    """The size arguments ``timm.create_model(name, ...)`` gets for a run at ``image_size``:
    ``img_size`` (and ``patch_size`` when set) for a model built for one input size, none
    for the others (a CNN takes any size). Exports record them: they rebuild the network."""
    one_size = builds_for_one_size(name)
    if patch_size is not None and not one_size:
        raise BackboneError(
            f"backbone.patch_size={patch_size}: '{name}' has no patch embedding (it takes "
            f"images of any size); patch_size is for ViTs and other patch models, e.g. "
            f"vit_tiny_patch16_224; use backbone.patch_size=null"
        )
    kwargs: dict[str, int] = {}
    if one_size and image_size is not None:
        kwargs["img_size"] = int(image_size)
    if patch_size is not None:
        if image_size is not None and image_size % patch_size:
            raise BackboneError(
                f"backbone.patch_size={patch_size} does not tile image_size={image_size} "
                f"(patches cover the image exactly); use a patch size that divides "
                f"{image_size}, e.g. {_dividing_patch(image_size)}"
            )
        kwargs["patch_size"] = int(patch_size)
    return kwargs


def _dividing_patch(image_size: int) -> int:
    """The largest of the usual patch sides (16, 14, 8, 4, 2) that divides ``image_size``."""
    return next((p for p in (16, 14, 8, 4, 2) if image_size % p == 0), 1)


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """(height, width) of the only images ``model`` accepts, or None when it takes any size.

    timm's ViTs (and Swin, DeiT, EVA, ...) build a patch embedding for one image size and
    assert it at every forward pass (``strict_img_size``) unless made with
    ``dynamic_img_size``; CNNs take any size."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is None or not getattr(embed, "strict_img_size", False):
        return None
    if getattr(model, "dynamic_img_size", False) or getattr(embed, "dynamic_img_pad", False):
        return None
    return int(size[0]), int(size[1])


def _check_input_size(model: nn.Module, name: str, image_size: int) -> None:
    fixed = fixed_input_size(model)
    if fixed is None or fixed == (image_size, image_size):
        return
    height, width = fixed
    side = f"{height}" if height == width else f"{height}x{width}"
    raise BackboneError(
        f"backbone '{name}' takes {height}x{width} images only (its patch embedding is built "
        f"for that size), but image_size={image_size}; use image_size={side}, or a backbone "
        f"made for {image_size}-px images (a CNN such as resnet18 takes any size)"
    )


def total_stride(model: nn.Module) -> int | None:
    """How many input pixels one cell of the final feature map spans along each side (32
    for a ResNet, 8 with the small-image stem, 16 for a ViT-B/16), from timm's
    ``feature_info``; None for a model that does not say."""
    info = getattr(model, "feature_info", None)
    try:
        reduction = info[-1]["reduction"]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return None
    return int(reduction) if reduction else None


def _create(name: str, zero_init_last: bool | None, size: dict[str, Any]) -> nn.Module:
    if zero_init_last is None or builds_for_one_size(name):
        if zero_init_last:  # patch models have no residual batch norm to zero
            _no_zero_init_last(name)
        return _create_sized(name, size)
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=0, zero_init_last=zero_init_last, **size
        )
    except TypeError as err:
        if "zero_init_last" not in str(err):
            raise
    if zero_init_last:
        _no_zero_init_last(name)
    return _create_sized(name, size)


def _create_sized(name: str, size: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **size)
    except (TypeError, AssertionError) as err:
        if not size:
            raise
        given = ", ".join(f"{key}={value}" for key, value in size.items())
        raise BackboneError(
            f"backbone '{name}' cannot be built for {given} ({type(err).__name__}: {err}); "
            "use the image size it was made for, or a ViT (vit_tiny_patch16_224, "
            "vit_small_patch16_224, ...), which timm builds for any size"
        ) from err


def _no_zero_init_last(name: str) -> None:
    raise BackboneError(
        f"backbone.zero_init_last=true: '{name}' has no zero_init_last option (timm "
        f"ResNets, RegNets and other residual CNNs have it); use backbone.zero_init_last=false"
    )


def _use_small_stem(model: nn.Module, name: str) -> None:
    if not isinstance(model, ResNet):
        raise BackboneError(
            f"backbone.small_stem=true is implemented for timm ResNets only, not '{name}' "
            f"({type(model).__name__}); use backbone.small_stem=false"
        )
    # The stem width is what bn1 normalises, whether conv1 is one conv or a deep stem.
    width = model.bn1.num_features
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    # The stem's stride 2 and the max-pool's are gone: every stage downsamples 4x less, and
    # timm's feature_info (read by total_stride) says so.
    model.feature_info = [
        {**stage, "reduction": max(1, stage["reduction"] // 4)} for stage in model.feature_info
    ]


#: ``eval.pool``'s values for a token model, with timm's name of each pooling: the class
#: token, or the mean of the patch tokens (the register and class tokens left out).
TOKEN_POOLS = {"cls": "token", "avg": "avg"}


def has_tokens(model: nn.Module) -> bool:
    """Whether ``model``'s features are pooled from tokens (timm's ViTs: ``pool`` over the
    output of ``forward_features``), so that ``eval.pool`` applies to it."""
    return callable(getattr(model, "pool", None)) and hasattr(model, "num_prefix_tokens")


#: The kinds of backbone a method may be made for (``SSLMethod.backbone_kinds``), with an
#: example of each for the messages: "cnn", a feature map (N, C, h, w) pooled by its global
#: average; "vit", a sequence of tokens (timm's VisionTransformer: class token + patches).
BACKBONE_KINDS = {"cnn": "resnet18", "vit": "vit_small_patch16_224"}


def backbone_kind(model: nn.Module) -> str:
    """``model``'s key of :data:`BACKBONE_KINDS`: "vit" for a timm VisionTransformer
    (tokens, a patch embedding, blocks: what lightly's masked-ViT wrappers take), else "cnn"."""
    return "vit" if isinstance(model, VisionTransformer) else "cnn"


class TokenPooled(nn.Module):
    """A ViT's features pooled one way whatever it pools in training: the class token
    (``cls``) or the mean of the patch tokens (``avg``), after the ViT's final norm, as
    timm computes them (``forward_features``, ``pool``, ``fc_norm``).

    Shapes: images (N, 3, H, W) -> features (N, vit.num_features).

    Example:
        >>> vit = create_backbone("vit_tiny_patch16_224", image_size=32, patch_size=8)
        >>> TokenPooled(vit, "avg")(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 192])
    """

    def __init__(self, vit: nn.Module, pool: str) -> None:
        super().__init__()
        if pool not in TOKEN_POOLS:
            raise BackboneError(f"unknown pool '{pool}'; valid: {', '.join(TOKEN_POOLS)}")
        if pool == "cls" and not getattr(vit, "has_class_token", True):
            raise BackboneError(
                f"eval.pool=cls: this {type(vit).__name__} has no class token; use eval.pool=avg"
            )
        self.vit, self.pool = vit, pool
        self.num_features = int(vit.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)
        return self.vit.fc_norm(self.vit.pool(tokens, pool_type=TOKEN_POOLS[self.pool]))


def feature_dim(model: nn.Module) -> int:
    """Size of the pooled feature vector."""
    return int(model.num_features)


def spatial_map(model: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    """``model.forward_features``'s output of square views as a map (N, C, h, w): a CNN's as
    it is; a ViT's patch tokens (N, prefix + h·w, C), its class and register tokens left
    out, laid out on their grid of patches (the feature map of the pretext heads)."""
    if backbone_kind(model) != "vit":
        return fmap
    tokens = fmap[:, int(model.num_prefix_tokens) :]
    side = math.isqrt(tokens.shape[1])
    return tokens.unflatten(1, (side, side)).permute(0, 3, 1, 2)


@torch.no_grad()
def feature_map_shape(model: nn.Module, side: int, *, spatial: bool = False) -> tuple[int, ...]:
    """Per-image shape of ``model.forward_features`` on a ``side``-px square, e.g.
    (512, 7, 7) for ResNet-18 at 224 px, (197, 384) for a ViT-S/16 (``spatial``: its
    :func:`spatial_map`, (384, 14, 14)), probed with one image in eval mode (batch norm
    neither uses nor updates batch statistics)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        fmap = model.forward_features(torch.zeros(1, 3, side, side, device=device))
        return tuple((spatial_map(model, fmap) if spatial else fmap).shape[1:])
    finally:
        model.train(was_training)
