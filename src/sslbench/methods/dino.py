"""DINO: Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"
(https://arxiv.org/abs/2104.14294), with a ResNet (lightly's benchmark recipe) or a ViT
backbone (the paper's recipe: the ``vit:`` section of method/dino.yaml, applied when the
backbone is a ViT).

Self-distillation without labels: a student network (backbone + DINO head) learns to give,
for every crop of an image, the output distribution that a teacher network gives for the
image's global crops. The teacher is an exponential moving average of the student
(:mod:`sslbench.methods.ema`); its outputs are centred (a running mean subtracted) and
sharpened (a low softmax temperature), which keeps both from collapsing. Multi-crop: the
teacher sees the 2 global crops only, the student all of them (global, then local).

Shapes, with 2 global views (N, 3, S, S) and L local views (N, 3, s, s): backbone features
(N, D) per crop → DINO head (MLP → L2-normalised bottleneck (N, bottleneck_dim) →
weight-normalised linear layer) → outputs (N, output_dim) per crop: teacher 2 × (N, K),
student (2 + L) × (N, K) → lightly's DINOLoss, the mean over the N images and the
2·(2 + L) − 2 (teacher view, student view) pairs of different views of the cross entropy
H(softmax((t − c)/τt), softmax(s/τs)).

Under DDP (lightly 1.6.0, loss/dino_loss.py and models/modules/center.py): each process's
loss is the mean over its own images, and DDP averages the gradients, so the step is the
global batch's (equal batches per process); each image's term needs only its own outputs
and the centre. The centre is updated inside the loss from the batch's mean teacher output,
which ``center_mean`` all-reduces over the processes: every process holds the global
batch's centre. It is a persistent buffer of the loss (``criterion.center`` in the
state_dict), so a checkpoint keeps it and a resumed run goes on with it. Batch norm (backbone
and heads) normalises over the global batch on several GPUs (``backbone.sync_batchnorm``),
over each process's own images on CPUs.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightly.loss import DINOLoss
from lightly.models.modules.heads import DINOProjectionHead
from torch import Tensor

from sslbench.methods.base import Views
from sslbench.methods.ema import EMATargetMethod


class DINO(EMATargetMethod):
    """DINO with lightly's DINOProjectionHead and DINOLoss, multi-crop, EMA teacher.

    ``self.backbone`` and ``projection_head`` are the student (the backbone evaluated);
    ``backbone_target`` and ``projection_head_target`` the teacher, their EMA copies with
    ``requires_grad`` False. The teacher starts as an exact copy of the student (the paper's
    Algorithm 1), not with a head of its own random init as in lightly's benchmark.

    Method keys (method/dino.yaml): hidden_dim, bottleneck_dim, output_dim, batch_norm,
    norm_last_layer, freeze_last_layer, warmup_teacher_temp, teacher_temp,
    warmup_teacher_temp_epochs, student_temp, center_momentum, momentum, momentum_end,
    local_views, joint_forward.
    """

    lightly_transform = "DINOTransform"
    small_overrides = (
        "method.hidden_dim=64", "method.bottleneck_dim=32", "method.output_dim=64",
        "method.local_views.count=2",
    )  # fmt: skip
    # Two local views, not six: the learning test's run within minutes on a CPU.
    learning_run_overrides = ("epochs=3", "method.local_views.count=2")

    def __init__(self, method: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(method, *args, **kwargs)
        # lightly's head weight-normalises its last layer with torch.nn.utils.weight_norm,
        # which keeps the normalised weight as a plain tensor attribute: built with
        # gradients on, that tensor is not a graph leaf and add_target's deepcopy refuses it.
        with torch.no_grad():
            self.projection_head = DINOProjectionHead(
                input_dim=self.feature_dim,
                hidden_dim=method["hidden_dim"],
                bottleneck_dim=method["bottleneck_dim"],
                output_dim=method["output_dim"],
                batch_norm=method["batch_norm"],
                norm_last_layer=method["norm_last_layer"],
                freeze_last_layer=int(method.get("freeze_last_layer", -1)),
            )
        self.backbone_target = self.add_target("backbone")
        self.projection_head_target = self.add_target("projection_head")
        self.criterion = DINOLoss(
            output_dim=method["output_dim"],
            warmup_teacher_temp=method["warmup_teacher_temp"],
            teacher_temp=method["teacher_temp"],
            warmup_teacher_temp_epochs=method["warmup_teacher_temp_epochs"],
            student_temp=method["student_temp"],
            center_momentum=method["center_momentum"],
        )

    def on_after_backward(self) -> None:
        # The head's last layer stays as it is for the first freeze_last_layer epochs.
        self.projection_head.cancel_last_layer_gradients(self.current_epoch)

    def teacher_outputs(self, views: Views) -> list[Tensor]:
        """The teacher's outputs 2 × (N, output_dim) of the global views (no gradient)."""
        with torch.no_grad():
            return self.forward_views(
                lambda x: self.projection_head_target(self.backbone_target(x)), views.global_views
            )

    def student_outputs(self, views: Views) -> list[Tensor]:
        """The student's outputs (2 + L) × (N, output_dim): global views, then local."""
        return self.forward_views(
            lambda x: self.projection_head(self.features(x)),
            [*views.global_views, *views.local_views],
        )

    def training_loss(self, views: Views) -> Tensor:
        teacher = self.teacher_outputs(views)
        student = self.student_outputs(views)
        self.monitor_embeddings(student[0])
        # The teacher temperature follows DINOLoss's per-epoch warm-up; the centre moves.
        loss = partial(self.criterion, epoch=self.current_epoch)
        return self.float32_loss(loss, teacher, student)
