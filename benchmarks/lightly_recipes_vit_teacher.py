"""lightly's side of benchmarks/lightly_reference.py for the ViT methods with a teacher or
joint embeddings: DINO on a ViT, iBOT, MSN (PMSN with ``method.prior=power_law``) and LeJEPA
(ResNets too), each built as lightly's ImageNet ViT benchmark or example builds it; the ViT
protocol and loop parts they share, and the masked-image methods: :mod:`lightly_recipes_vit`.
:data:`BUILDERS` has all seven ViT recipes.
"""

from __future__ import annotations

from collections.abc import Callable

import lightly_recipes_momentum
import torch
from lightly.loss import DINOLoss, IBOTPatchLoss, LeJEPALoss, MSNLoss, PMSNLoss
from lightly.models import utils
from lightly.models.modules import (
    DINOProjectionHead,
    LeJEPAProjectionHead,
    MaskedVisionTransformerTIMM,
)
from lightly.models.modules.heads import MSNProjectionHead
from lightly.utils.scheduler import linear_warmup_schedule
from lightly_recipes import Progress, Recipe, sslbench_backbone
from lightly_recipes_momentum import dino_views, ema_before_step, frozen_copies
from lightly_recipes_vit import (
    MIM_BUILDERS,
    TIMM_INIT,
    WRAPPER_INIT,
    ViTRecipe,
    ibot_views,
)
from omegaconf import DictConfig
from torch import Tensor, nn

from sslbench.nn.backbones import backbone_kind
from sslbench.tools.lightly_views import (
    msn_transform,
)


# -- self-distillation and joint embeddings -------------------------------------------------
def dino_head(cfg: DictConfig, input_dim: int) -> DINOProjectionHead:
    m = cfg.method
    return DINOProjectionHead(
        input_dim=input_dim, hidden_dim=m.hidden_dim, bottleneck_dim=m.bottleneck_dim,
        output_dim=m.output_dim, batch_norm=m.batch_norm, norm_last_layer=m.norm_last_layer,
        freeze_last_layer=int(m.get("freeze_last_layer", -1)),
    )  # fmt: skip


def build_dino(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's DINO ViT benchmark (a ResNet: momentum's Res18 recipe): the student and a
    teacher ViT of its own init, each wrapped in MaskedVisionTransformerTIMM, each with its
    head; the global crops, then the local ones, through the networks together; DINOLoss."""
    if backbone_kind(backbone) != "vit":
        return lightly_recipes_momentum.build_dino(cfg, backbone)
    m = cfg.method
    student, head = MaskedVisionTransformerTIMM(vit=backbone), dino_head(cfg, backbone.embed_dim)
    teacher = nn.ModuleDict({
        "backbone": MaskedVisionTransformerTIMM(vit=sslbench_backbone(cfg)),
        "head": dino_head(cfg, backbone.embed_dim),
    })  # fmt: skip
    utils.deactivate_requires_grad(teacher)
    criterion = DINOLoss(
        output_dim=m.output_dim, warmup_teacher_temp=m.warmup_teacher_temp,
        teacher_temp=m.teacher_temp, warmup_teacher_temp_epochs=m.warmup_teacher_temp_epochs,
        student_temp=m.student_temp, center_momentum=m.center_momentum,
    )  # fmt: skip

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        with torch.no_grad():
            t = teacher["head"](teacher["backbone"](torch.cat(views[:2])))
        s = [head(student(torch.cat(group))) for group in (views[:2], views[2:]) if group]
        return criterion(t.chunk(2), torch.cat(s).chunk(len(views)), epoch=epoch)

    model = nn.ModuleDict({"backbone": backbone, "student": student, "head": head,
                           "teacher": teacher, "loss": criterion})  # fmt: skip
    differences = [
        "teacher: a ViT and a head of their own init (lightly's ViT benchmark); sslbench's "
        "starts as an exact copy of the student (the paper's)",
        WRAPPER_INIT.format(TIMM_INIT),
        "scored: the student's ViT, as sslbench's; lightly's benchmark scores its teacher",
        "crops: DINOTransform resizes them bicubically (sslbench: bilinear roi_align)",
    ]
    vs = "teacher temperature warmed up vs 0.04; no drop path (0.1); ViT-S/16, 8 local crops"
    before = ema_before_step(m, [(student, teacher["backbone"]), (head, teacher["head"])])
    return ViTRecipe(model, dino_views(cfg), loss, differences, before,
                     lambda at: head.cancel_last_layer_gradients(at.epoch), vs)  # fmt: skip


def build_ibot(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's iBOT benchmark: DINO's [CLS] loss and IBOTPatchLoss on the patches that
    lightly's random_block_mask masks in the student's global views; the teacher an EMA copy
    of the student with a head of its own init; teacher temperatures warmed up by the step."""
    m = cfg.method
    if not m.shared_head:
        raise ValueError("lightly's iBOT benchmark shares one head (method.shared_head=true)")
    student = MaskedVisionTransformerTIMM(vit=backbone, antialias=False,
                                          pos_embed_initialization="skip")  # fmt: skip
    head, teacher = dino_head(cfg, backbone.embed_dim), frozen_copies(backbone=student)
    teacher["head"] = dino_head(cfg, backbone.embed_dim)
    utils.deactivate_requires_grad(teacher)
    cls_criterion = DINOLoss(m.output_dim, student_temp=m.student_temp,
                             center_momentum=m.center_momentum)  # fmt: skip
    patch_criterion = IBOTPatchLoss(m.output_dim, student_temp=m.student_temp,
                                    center_momentum=m.patch_center_momentum)  # fmt: skip
    h, w = (int(side) for side in backbone.patch_embed.grid_size)
    ema = ema_before_step(m, [(student, teacher["backbone"]), (head, teacher["head"])])
    now = [Progress(0, 0, 0, 1)]

    def before_step(at: Progress) -> None:
        ema(at)
        now[0] = at

    def temperature(start: float, end: float) -> float:
        warmup = int(m.warmup_teacher_temp_epochs * now[0].total_steps / cfg.epochs)
        return linear_warmup_schedule(now[0].step, warmup, start, end)

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        x, n = torch.cat(views[:2]), 2 * views[0].shape[0]
        blocks = utils.random_block_mask(
            (n, h, w), m.mask_probability, m.mask_ratio[0], m.mask_ratio[1],
            min_num_masks_per_block=(min(h, w) // 3) ** 2,
            min_block_aspect_ratio=m.mask_aspect_ratio[0],
            max_block_aspect_ratio=m.mask_aspect_ratio[1],
            max_attempts_per_block=m.mask_attempts, device=x.device,
        )  # fmt: skip
        mask = torch.cat([blocks.new_zeros(n, 1), blocks.flatten(1)], dim=1)  # class token: 0
        with torch.no_grad():
            t = teacher["backbone"].encode(x)
            t_cls, t_patch = teacher["head"](t[:, 0]), teacher["head"](t[mask])
        s = student.encode(x, mask=mask)
        s_cls = [head(s[:, 0])]
        if len(views) > 2:
            s_cls.append(head(student.encode(torch.cat(views[2:]))[:, 0]))
        cls_temp = temperature(m.warmup_teacher_temp, m.teacher_temp)
        cls = cls_criterion(t_cls.chunk(2), torch.cat(s_cls).chunk(len(views)), cls_temp)
        patch_temp = temperature(m.warmup_teacher_patch_temp, m.teacher_patch_temp)
        patches = patch_criterion(t_patch, head(s[mask]), blocks, teacher_temp=patch_temp)
        return m.cls_loss_weight * cls + m.patch_loss_weight * patches

    model = nn.ModuleDict({"backbone": backbone, "student": student, "head": head,
                           "teacher": teacher, "cls_loss": cls_criterion,
                           "patch_loss": patch_criterion})  # fmt: skip
    differences = [
        "masks: lightly's random_block_mask (DINOv2's): exactly half the view-images masked, "
        "their ratios spread evenly over the range, blocks drawn image by image; sslbench: "
        "each masked with p 0.5 at a U(range) ratio, the batch's blocks drawn together",
        "teacher temperatures warmed up by the step (lightly's linear_warmup_schedule); "
        "sslbench: by the epoch. Teacher head: its own init (lightly's); sslbench: a copy",
        "initialisation: MAE's xavier by the wrapper, the position embedding kept learnt "
        "(lightly's benchmark); sslbench: timm's init",
    ]
    vs = "no LayerScale (1e-5) nor drop path (0.1); ViT-S/16 at 224 px, 10 local crops"
    return ViTRecipe(model, ibot_views(cfg), loss, differences, before_step,
                     lambda at: head.cancel_last_layer_gradients(at.epoch), vs)  # fmt: skip


def build_msn(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's MSN / PMSN example on the timm ViT: anchors (view 1 with dropped patches,
    then the focal views) through the anchor network, the target (view 0) through its EMA
    copy; MSNLoss, or PMSNLoss with ``prior: power_law``, against the prototypes."""
    m = cfg.method
    anchor = MaskedVisionTransformerTIMM(vit=backbone)
    projection = MSNProjectionHead(backbone.embed_dim, m.hidden_dim, m.output_dim)
    target = frozen_copies(backbone=anchor, projection=projection)
    prototypes = nn.Linear(m.output_dim, m.num_prototypes, bias=False)  # the example's weight
    losses = {"uniform": MSNLoss, "power_law": PMSNLoss}
    extra = {"power_law_exponent": m.power_law_exponent} if m.prior == "power_law" else {}
    criterion = losses[m.prior](
        temperature=m.temperature, sinkhorn_iterations=m.sinkhorn_iterations,
        regularization_weight=m.me_max_weight, gather_distributed=m.gather_distributed, **extra,
    )  # fmt: skip
    patch = int(backbone.patch_embed.patch_size[0])

    def anchors(x: Tensor, masked: bool) -> Tensor:
        length = (x.shape[-1] // patch) ** 2 + 1  # with the class token (see differences)
        size, device = (x.shape[0], length), x.device
        keep = utils.random_token_mask(size, m.mask_ratio, device=device)[0] if masked else None
        return projection(anchor(images=x, idx_keep=keep))

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        with torch.no_grad():
            targets = target["projection"](target["backbone"](images=views[0]))
        out = [anchors(views[1], True)]
        if len(views) > 2:
            out.append(anchors(torch.cat(views[2:]), m.mask_local_views))
        return criterion(torch.cat(out), targets, prototypes.weight,
                         target_sharpen_temperature=m.target_sharpen_temperature)  # fmt: skip

    model = nn.ModuleDict({"backbone": backbone, "anchor": anchor, "projection": projection,
                           "prototypes": prototypes, "target": target})  # fmt: skip
    differences = [
        WRAPPER_INIT.format(TIMM_INIT),
        "focal views through the anchor network together (lightly's example: the head's "
        "batch norm over them all); sslbench: each view on its own",
        "prototypes: decayed (this loop's groups); sslbench: undecayed (the official code)",
        "mask: the class token counted in the sequence (lightly's MAE benchmark); lightly's "
        "MSN example counts the patches only, so that its last patch is never kept",
    ]
    vs = ("prototypes trained (MSNLoss's docstring) where the example passes prototypes.data; "
          "its EMA momentum constant 0.996, its focal views masked")  # fmt: skip
    before = ema_before_step(m, [(anchor, target["backbone"]), (projection, target["projection"])])
    return ViTRecipe(model, msn_transform(cfg), loss, differences, before, vs_lightly_benchmark=vs)


def build_lejepa(cfg: DictConfig, backbone: nn.Module) -> Recipe:
    """lightly's LeJEPA benchmark: the global views, then the local ones, through the
    backbone and LeJEPAProjectionHead together; LeJEPALoss (SIGReg and the invariance)."""
    m = cfg.method
    if m.local_views.count < 1:
        raise ValueError("lightly's LeJEPA benchmark takes local views: method.local_views.count")
    head = LeJEPAProjectionHead(backbone.num_features, m.hidden_dim, m.output_dim, m.num_layers)
    criterion = LeJEPALoss(
        lambda_param=m.lambda_param, gather_distributed=m.gather_distributed,
        sigreg_knots=m.knots, sigreg_t_max=m.t_max, sigreg_num_vectors=m.num_slices,
    )  # fmt: skip

    def loss(views: list[Tensor], epoch: int) -> Tensor:
        local, global_ = (
            torch.stack(head(backbone(torch.cat(group))).chunk(len(group)))
            for group in (views[2:], views[:2])
        )
        return criterion(local_proj=local, global_proj=global_)

    differences = [
        "views of one size through the network together (lightly's benchmark): the "
        "projector's batch norm over them; sslbench (joint_forward false): each on its own",
        "SIGReg's directions: torch's global generator (lightly's); sslbench: a generator "
        "seeded from the run's seed and step",
    ]
    vs = "blur 0.5 on every view there; its lr warms up from 0.01, ends at 0.001; drop path 0.1"
    model = nn.ModuleDict({"backbone": backbone, "head": head})
    return ViTRecipe(model, dino_views(cfg), loss, differences, vs_lightly_benchmark=vs)


#: The methods of this module, by sslbench method name (the ViT protocol's, in this order).


BUILDERS: dict[str, Callable[[DictConfig, nn.Module], Recipe]] = {
    **MIM_BUILDERS,
    "ibot": build_ibot,
    "msn": build_msn,
    "lejepa": build_lejepa,
    "dino": build_dino,
}
