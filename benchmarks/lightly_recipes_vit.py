"""lightly's side of benchmarks/lightly_reference.py for the ViT methods: MAE, SimMIM, I-JEPA
here, iBOT, MSN (PMSN with ``method.prior=power_law``), LeJEPA (ResNets too) and DINO on a
ViT in :mod:`lightly_recipes_vit_teacher`; the ViT protocol and loop parts they share here.

Each is built as lightly's ImageNet ViT benchmark builds it (lightly's repository,
benchmarks/imagenet/vitb16: mae, simmim, dino, ibot, lejepa) or, without one, lightly's
example (examples/pytorch: ijepa, msn, pmsn), around the run's timm ViT as sslbench builds it:
lightly's masked-ViT wrapper initialised as each benchmark does, its decoder, predictor,
heads and losses, masks from lightly's helpers (torch's and Python's global generators),
lightly's transforms. Every size and value comes from ``cfg.method``; a recipe's
``differences`` say where it still differs from sslbench's side, ``vs_lightly_benchmark``
where the run's settings differ from lightly's benchmark. The ViT protocol
(``lightly_reference.py --vit``, the issue's "tiny ViT at 32 px") puts every method on the
ViT of the ViT methods' learning runs (:func:`vit_run`). :data:`BUILDERS` has all seven.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightly.data import IJEPAMaskCollator
from lightly.models import utils
from lightly.models.modules import (
    IJEPAPredictorTIMM,
    MaskedVisionTransformerDecoderTIMM,
    MaskedVisionTransformerTIMM,
)
from lightly.transforms import IBOTTransform, MAETransform
from lightly.transforms.ijepa_transform import IJEPATransform
from lightly.utils.scheduler import cosine_schedule
from lightly_recipes import Progress, Recipe
from lightly_recipes_momentum import ema_before_step, frozen_copies
from omegaconf import DictConfig
from PIL import Image
from torch import Tensor, nn

from sslbench.methods import method_class
from sslbench.methods.base import LEARNING_VIT
from sslbench.nn.backbones import has_tokens
from sslbench.tools.lightly_views import (
    ImageTransform,
    dino_crops_transform,
    ibot_transform,
    simclr_view_parameters,
)


# -- the run's backbone and features, the ViT protocol ----------------------------------------
def pool_name(cfg: DictConfig) -> str:
    """What a ViT of the run is scored on: ``eval.pool``, else the method's ``eval_pool``."""
    return cfg.eval.get("pool") or method_class(cfg.method.name).eval_pool


def eval_pool(cfg: DictConfig, backbone: nn.Module) -> str | None:
    """:func:`pool_name` for a token model (as sslbench's run.evaluate), None for a CNN."""
    return pool_name(cfg) if has_tokens(backbone) else None


#: The ViT protocol's additions for a method whose learning run is on a ResNet: DINO's ViT
#: recipe warms up over 10 epochs (its teacher temperature over 30), past a short run's end.
VIT_EXTRA = {"dino": ("method.optimizer.warmup_epochs=0.3", "method.warmup_teacher_temp_epochs=1")}


def vit_run(method: str) -> tuple[str, ...]:
    """The ViT protocol's overrides after ``method``'s learning-run ones: none if that run is
    on the ViT already, else ``LEARNING_VIT`` (ViT-Ti, 8-px patches) and :data:`VIT_EXTRA`'s."""
    if any(o.startswith("backbone=vit") for o in method_class(method).learning_run_overrides):
        return ()
    return (*LEARNING_VIT, *VIT_EXTRA.get(method, ()))


# -- what a ViT recipe adds to the loop --------------------------------------------------------
@dataclass
class ViTRecipe(Recipe):
    """A :class:`Recipe` with ``before_optimizer_step(progress)``, run after the backward
    pass (lightly's on_before_optimizer_step: DINO's frozen last layer), and how the run's
    settings differ from lightly's benchmark."""

    before_optimizer_step: Callable[[Progress], None] | None = None
    vs_lightly_benchmark: str = ""


def before_optimizer_step(
    cfg: DictConfig, recipe: Recipe, optimizer: torch.optim.Optimizer
) -> Callable[[Progress], None] | None:
    """Between the backward pass and the optimiser step, in Lightning's order: the recipe's
    own step; the weight decay's cosine from ``weight_decay`` to ``weight_decay_end`` on the
    decaying groups (lightly's ViT benchmarks: cosine_schedule); clipping of the total norm
    (``grad_clip_mode: total``, Lightning's "norm") or of each tensor's (``per_tensor``, DINO's
    clip_gradients). None where there is nothing to do (the ResNet recipes)."""
    opt = cfg.method.optimizer
    own = getattr(recipe, "before_optimizer_step", None)
    end, clip = opt.get("weight_decay_end"), opt.get("grad_clip")
    if own is None and end is None and clip is None:
        return None
    decaying = [group for group in optimizer.param_groups if group["weight_decay"] != 0.0]
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def hook(at: Progress) -> None:
        if own is not None:
            own(at)
        if end is not None:
            for group in decaying:
                group["weight_decay"] = cosine_schedule(
                    at.step, at.total_steps, opt.weight_decay, end
                )
        if clip is not None and opt.get("grad_clip_mode", "total") == "total":
            nn.utils.clip_grad_norm_(params, clip)
        elif clip is not None:
            for p in (p for p in params if p.grad is not None):
                p.grad.mul_((clip / (p.grad.norm() + 1e-6)).clamp(max=1.0))

    return hook


# -- views -------------------------------------------------------------------------------------
class OneView:
    """IJEPATransform's one tensor as the one-view list that the loop takes."""

    def __init__(self, transform: Callable[[Image.Image], Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> list[Tensor]:
        return [self.transform(image)]


def crop_view(cfg: DictConfig, kind: type[MAETransform] | type[IJEPATransform]) -> ImageTransform:
    """MAETransform or IJEPATransform (a crop and a flip) at the run's crop scale."""
    normalize = simclr_view_parameters(cfg)["normalize"]  # also checks the crop's ratio
    view = kind(input_size=cfg.image_size, min_scale=cfg.transform.ops.resized_crop.scale[0],
                normalize=normalize)  # fmt: skip
    return view if kind is MAETransform else OneView(view)


def ibot_views(cfg: DictConfig) -> ImageTransform:
    """IBOTTransform at the run's crops, as momentum's dino_views makes DINOTransform."""
    if cfg.transform.name != "simclr":
        return ibot_transform(cfg)
    blur = simclr_view_parameters(cfg)["gaussian_blur"]
    return dino_crops_transform(cfg, (blur, blur, blur), 0.0, IBOTTransform)


CROP_VIEW = "views: {} (bicubic); sslbench: its {}crop and flip (bilinear roi_align)"
WRAPPER_INIT = (
    "initialisation: MaskedVisionTransformerTIMM's defaults (MAE's xavier init, a fixed "
    "sin-cos position embedding: lightly's timm benchmarks'); sslbench: {}"
)
TIMM_INIT = "timm's init, a learnt position embedding"


# -- masked image modelling ------------------------------------------------------------------
def patch_and_length(vit: nn.Module) -> tuple[int, int]:
    """(patch side, token count) of a ViT with one class token, which lightly's MAE and
    SimMIM benchmarks assume (their targets are ``idx_mask - 1``)."""
    if vit.num_prefix_tokens != 1:
        raise ValueError(f"lightly's recipe takes one class token, not {vit.num_prefix_tokens}")
    return int(vit.patch_embed.patch_size[0]), int(vit.patch_embed.num_patches) + 1


def build_mae(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's MAE benchmark: the masked-ViT encoder on the kept patches, a linear
    embedding, the ViT decoder with its mask token in the dropped places, a linear head;
    MSE on the dropped patches (each normalised by its mean and variance: ``norm_pix_loss``)."""
    m = cfg.method
    patch, length = patch_and_length(backbone)
    encoder = MaskedVisionTransformerTIMM(vit=backbone)
    embed = nn.Linear(backbone.embed_dim, m.decoder_dim)
    decoder = MaskedVisionTransformerDecoderTIMM(
        num_patches=length - 1, embed_dim=m.decoder_dim, depth=m.decoder_depth,
        num_heads=m.decoder_num_heads, num_prefix_tokens=1, mlp_ratio=m.decoder_mlp_ratio,
    )  # fmt: skip
    head = nn.Linear(m.decoder_dim, patch**2 * 3)

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        images, n = views[0], views[0].shape[0]
        keep, masked = utils.random_token_mask((n, length), m.mask_ratio, device=images.device)
        tokens = embed(encoder.encode(images=images, idx_keep=keep))
        full = utils.set_at_index(tokens.new_zeros(n, length, tokens.shape[-1]), keep, tokens)
        predicted = head(utils.get_at_index(decoder(full, idx_mask=masked), masked))
        target = utils.get_at_index(utils.patchify(images, patch), masked - 1)
        return F.mse_loss(
            predicted, utils.normalize_mean_var(target) if m.norm_pix_loss else target
        )

    model = nn.ModuleDict(
        {"backbone": backbone, "encoder": encoder, "embed": embed, "decoder": decoder, "head": head}
    )
    differences = [
        "decoder embedding and head: torch's default Linear init (lightly's benchmark); "
        "sslbench: xavier-uniform (the official code's)",
        CROP_VIEW.format("MAETransform", ""),
    ]
    vs = (f"norm_pix_loss {m.norm_pix_loss} vs false; decoder {m.decoder_depth} x "
          f"{m.decoder_dim} vs 8 x 512; ViT-B/16 at 224 px, warm-up 40 of 800 epochs")  # fmt: skip
    return ViTRecipe(
        model, crop_view(cfg, MAETransform), loss, differences, vs_lightly_benchmark=vs
    )


def build_simmim(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's SimMIM benchmark: square blocks of patches replaced by the wrapper's mask
    token (random_grid_token_mask), every token encoded, a linear head; L1 on the masked."""
    m = cfg.method
    patch, length = patch_and_length(backbone)
    block = int(m.mask_patch_size or patch) // patch
    if block * patch != int(m.mask_patch_size or patch):
        raise ValueError(f"method.mask_patch_size={m.mask_patch_size}: not whole patches")
    encoder = MaskedVisionTransformerTIMM(vit=backbone)
    head = nn.Linear(backbone.embed_dim, patch**2 * 3)

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        images = views[0]
        _, masked = utils.random_grid_token_mask(
            (images.shape[0], length), m.mask_ratio, block, 1, device=images.device
        )
        tokens = utils.get_at_index(encoder.encode(images=images, idx_mask=masked), masked)
        target = utils.get_at_index(utils.patchify(images, patch), masked - 1)
        return F.l1_loss(head(tokens), target)

    model = nn.ModuleDict({"backbone": backbone, "encoder": encoder, "head": head})
    differences = [
        WRAPPER_INIT.format(TIMM_INIT) + "; mask token 0 (the wrapper's) vs truncated normal, "
        "std 0.02 (the official code's)",
        CROP_VIEW.format("MAETransform (lightly's SimMIM benchmark's)", ""),
    ]
    vs = f"blocks of {block} patch(es) a side vs 2 of 16 px; ViT-B/16 at 224 px, 100 epochs"
    return ViTRecipe(
        model, crop_view(cfg, MAETransform), loss, differences, vs_lightly_benchmark=vs
    )


def collator_min_keep(cfg: DictConfig, grid: tuple[int, int]) -> int:
    """``method.min_keep`` below the smallest target block that IJEPAMaskCollator draws at
    this grid: it redraws every block (targets too) until it has more than min_keep patches,
    forever for the 2-patch targets of a 4 x 4 grid and min_keep 10."""
    m, (h, w) = cfg.method, grid
    (s0, s1), (a0, a1), smallest = m.target_scale, m.target_aspect_ratio, h * w
    for u in (i / 1000 for i in range(1001)):  # the collator's one draw for scale and ratio
        keep, ratio = int(h * w * (s0 + u * (s1 - s0))), a0 + u * (a1 - a0)
        bh, bw = round(math.sqrt(keep * ratio)), round(math.sqrt(keep / ratio))
        smallest = min(smallest, min(bh, h - 1) * min(bw, w - 1))
    if smallest < 1:
        raise ValueError(f"method.target_scale {list(m.target_scale)}: empty blocks at {h}x{w}")
    return min(int(m.min_keep), smallest - 1)


def draw_masks(collator: IJEPAMaskCollator, batch_size: int) -> tuple[Tensor, list, list]:
    """The collator's masks of a batch, as the example's collate_fn draws them, drawn again
    (its next seed) while a block has one patch: its squeeze makes that index 0-d, and
    ``len()`` of it fails (1 x 1 targets at a 4 x 4 grid, about a third of the sizes)."""
    for _ in range(100):
        try:
            return collator(list(range(batch_size)))
        except TypeError as err:
            if "0-d tensor" not in str(err):
                raise
    raise RuntimeError("IJEPAMaskCollator drew 1-patch blocks 100 times: target_scale too small")


def build_ijepa(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's I-JEPA example on the timm ViT: the masked-ViT wrapper as the context
    encoder, its EMA copy the target encoder, IJEPAPredictorTIMM, IJEPAMaskCollator's context
    and target blocks; smooth L1 (``loss: mse``: MSE) to the layer-normed targets."""
    m = cfg.method
    grid = (int(backbone.patch_embed.grid_size[0]), int(backbone.patch_embed.grid_size[1]))
    encoder = MaskedVisionTransformerTIMM(vit=backbone)
    target = frozen_copies(encoder=encoder)  # the example's copy.deepcopy(encoder)
    predictor = IJEPAPredictorTIMM(
        num_patches=grid[0] * grid[1], depth=m.predictor_depth, mlp_dim=backbone.embed_dim,
        predictor_embed_dim=m.predictor_dim, num_heads=backbone.blocks[0].attn.num_heads,
    )  # fmt: skip
    min_keep = collator_min_keep(cfg, grid)
    collator = IJEPAMaskCollator(
        input_size=cfg.image_size, patch_size=int(backbone.patch_embed.patch_size[0]),
        enc_mask_scale=tuple(m.context_scale), pred_mask_scale=tuple(m.target_scale),
        aspect_ratio=tuple(m.target_aspect_ratio), nenc=1, npred=m.num_targets, min_keep=min_keep,
    )  # fmt: skip
    distance = {"smooth_l1": F.smooth_l1_loss, "mse": F.mse_loss}[m.loss]
    prefix = int(backbone.num_prefix_tokens)

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        images = views[0]
        _, contexts, targets = draw_masks(collator, images.shape[0])
        contexts, targets = ([i.to(images.device) for i in x] for x in (contexts, targets))
        with torch.no_grad():
            h = target["encoder"].encode(images=images)[:, prefix:]
            h = utils.apply_masks(F.layer_norm(h, (h.shape[-1],)), targets)
        first = torch.arange(prefix, device=images.device).expand(images.shape[0], -1)
        keep = torch.cat([first, contexts[0] + prefix], dim=1)  # the class token kept
        z = encoder.encode(images=images, idx_keep=keep)[:, prefix:]
        return distance(predictor(z, contexts, targets), h)

    model = nn.ModuleDict(
        {"backbone": backbone, "encoder": encoder, "predictor": predictor, "target": target}
    )
    differences = [
        "masks: IJEPAMaskCollator (the official rules): one size per batch for the targets and "
        "one for the context, no block in the grid's last row or column, min_keep for targets "
        f"too ({min_keep}; the cfg's {m.min_keep} if the {grid[0]}x{grid[1]} grid allows), "
        "the targets' removal relaxed after 20 failed draws; sslbench: sizes per image, "
        "min_keep for the context only; a batch with a 1-patch block is drawn again (the "
        "collator fails on one: its squeeze leaves a 0-d index), so no target has 1 patch",
        WRAPPER_INIT.format("timm's init, the same fixed embedding"),
        CROP_VIEW.format("IJEPATransform (crop, flip p 0.5)", "crop only, no "),
    ]
    vs = "lightly's example: torchvision ViTs, EMA momentum linear (here the cfg's cosine)"
    before = ema_before_step(m, [(encoder, target["encoder"])])
    view = crop_view(cfg, IJEPATransform)
    return ViTRecipe(model, view, loss, differences, before, vs_lightly_benchmark=vs)


#: The masked-image and predictive methods' recipes (the teacher ones: lightly_recipes_vit_teacher).
MIM_BUILDERS: dict[str, Callable[[DictConfig, nn.Module], Recipe]] = {
    "mae": build_mae,
    "simmim": build_simmim,
    "ijepa": build_ijepa,
}
