"""The shared base of every SSL method: a LightningModule trained by Lightning's Trainer.

A batch arrives as uint8 images straight from the decode-once cache. The training step
then reads top to bottom:

1. views: the method's layout (two global views, optional local views, optional
   coordinate maps) made by the pipeline on the module's device (GPU when there is one),
   in float32 outside autocast, with a generator seeded from (seed, rank, epoch, step);
2. the subclass turns the views into a loss (backbone, heads, lightly loss in float32) and
   hands its embeddings to the collapse monitor;
3. with a pretext task (``pretext=lorot|dcl``), its heads read the op labels of the views and
   the feature maps that the method's backbone calls left (:meth:`SSLMethod.feature_map`),
   and ``pretext.weight`` times their loss joins the method's;
4. a non-finite loss sets a flag on the device, read every N steps, so no step waits for
   the host.

A method subclasses :class:`SSLMethod` and implements :meth:`training_loss`, passing views
through the backbone with :meth:`SSLMethod.features` (pooled) or
:meth:`SSLMethod.feature_map`, so that pretext heads see them; its YAML may ask for local
views with a ``local_views`` section (count, size_ratio, scale). Views go
through the networks one at a time, as in lightly's benchmark (``method.joint_forward``
concatenates same-sized views instead; see :meth:`SSLMethod.forward_views`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sslbench.errors import NonFiniteLossError
from sslbench.methods.banks import bank_state, load_bank_state
from sslbench.methods.recipe import OptimizerRecipe
from sslbench.methods.views import ViewMaker, Views
from sslbench.nn.backbones import backbone_kind, spatial_map
from sslbench.pretext import PRETEXT_OPS, create_pretext, pretext_name
from sslbench.pretext.base import FeatureTap, PretextInputs
from sslbench.transforms import Pipeline, local_view_pipeline, make_generator

#: The checkpoint entry of :meth:`SSLMethod.extra_checkpoint_state`.
EXTRA_STATE_KEY = "sslbench_extra_state"

#: The backbone of a ViT method's unit tests (``small_overrides``) and of its learning run on
#: Fashion-MNIST: ViT-Ti in 4 x 4 patches of 8 px at 32 px (a ViT has no residual batch norm
#: to start at 0, which the learning runs ask of ResNets).
TEST_VIT = ("backbone=vit_tiny_patch16_224", "backbone.patch_size=8")
LEARNING_VIT = (*TEST_VIT, "backbone.zero_init_last=false")
#: A ViT method's learning run: 3 epochs, a tenth of them warming up (the papers warm up
#: over 5-13% of their runs; their warm-ups in epochs would keep a 3-epoch run near lr 0).
LEARNING_VIT_RUN = ("epochs=3", *LEARNING_VIT, "method.optimizer.warmup_epochs=0.3")

#: Appended to a step's (rank, epoch, step) stream for its masks: (.., step, 1) is a stream
#: apart from the views' (.., step).
MASK_STREAM = 1

#: Below this, embeddings are judged to be collapsing (std of L2-normalised embeddings
#: times sqrt(dim): about 1 when they spread over the sphere, 0 when all are equal).
COLLAPSE_WARNING_RATIO = 0.1


def effective_rank(embeddings: Tensor) -> Tensor:
    """Effective rank (Roy & Vetterli 2007) of (N, D) embeddings: exp of the entropy of
    their normalised singular values; D for isotropic embeddings, 1 for a line."""
    centred = embeddings.float() - embeddings.float().mean(dim=0)
    singular = torch.linalg.svdvals(centred)
    p = singular / singular.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class SSLMethod(OptimizerRecipe):
    """Backbone + method heads, trained on views of uint8 batches.

    Args:
        method: the ``method`` section of the run config (name, optimizer, own keys).
        backbone: a feature extractor (N, 3, H, W) -> (N, D), e.g. from create_backbone.
        pipeline: the augmentation pipeline of the global views, or one per view variant
            (global view i uses ``pipeline[i % len(pipeline)]``); local views use the first.
        batch_size: the global batch size (over all devices), for the lr scaling.
        seed: root of the augmentation random streams.
        check_finite_every_n_steps: how often the non-finite flag is read on the host.
        log_every_n_steps: how often the costlier monitors (effective rank) are computed.
        channels_last: views in channels-last memory format (faster convolutions on GPU).
        pretext: the run's ``pretext`` section (None: no pretext task); its op's labels and
            parameters come from the pipelines.
    """

    #: Views per image that the method needs (two global views for all the study's methods).
    num_global_views = 2
    #: Whether the method needs coordinate maps of its views (VICRegL's location grids).
    needs_coordinates = False
    #: lightly's reference transform of the views, a key of sslbench.tools.lightly_views.TRANSFORMS
    #: ("pipeline": the one equal to the run's two-view pipeline; "SwaVTransform", ...), or
    #: None: lightly has none. No default, so a multi-crop method cannot fall to two views.
    lightly_transform: ClassVar[str | None]
    #: Overrides that make the method cheap in the CPU unit tests (narrow heads, two local
    #: views), and of a short run that learns on Fashion-MNIST
    #: (tests/methods/test_methods_learn.py): 2 epochs where they beat random init by 2
    #: linear points or more, else 3 (docs/benchmarks.md has both).
    small_overrides: ClassVar[tuple[str, ...]] = ()
    learning_run_overrides: ClassVar[tuple[str, ...]] = ("epochs=2",)
    #: The method keys that size a memory bank (MoCo's ``memory_bank_size``, ...): the run
    #: refuses a bank larger than its training set (sslbench.methods.banks).
    bank_keys: ClassVar[tuple[str, ...]] = ()
    #: On a ViT, the features its paper evaluates (``eval.pool`` when that is null).
    eval_pool: ClassVar[str] = "cls"
    #: The backbone kinds (sslbench.nn.backbones.BACKBONE_KINDS) the method trains: "cnn" (a
    #: feature map, average-pooled) and "vit" (tokens). A method made for tokens (MAE masks
    #: patches) says ("vit",): any other backbone is refused before anything is built.
    backbone_kinds: ClassVar[tuple[str, ...]] = ("cnn", "vit")
    #: The ops of the run's pipeline the method applies (None: all of them). MAE's paper
    #: augments with a crop and a flip only: ("resized_crop", "hflip", "normalize").
    pipeline_ops: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        method: Mapping[str, Any],
        backbone: nn.Module,
        pipeline: Pipeline | Sequence[Pipeline],
        *,
        batch_size: int,
        seed: int = 0,
        check_finite_every_n_steps: int = 10,
        log_every_n_steps: int = 10,
        channels_last: bool = False,
        pretext: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.method_cfg = dict(method)
        self.backbone = backbone
        self.view_pipelines = [pipeline] if isinstance(pipeline, Pipeline) else list(pipeline)
        name = pretext_name(pretext)
        op = None if name is None else PRETEXT_OPS[name]
        if self.pipeline_ops is not None:  # a pretext task's op stays: its heads read its labels
            kept = (*self.pipeline_ops, *([op] if op else []))
            self.view_pipelines = [p.keeping(kept) for p in self.view_pipelines]
        self.pipeline = self.view_pipelines[0]  # also the evaluation view's normalisation
        self.batch_size = batch_size
        self.seed = seed
        self.check_every = max(1, check_finite_every_n_steps)
        self.channels_last = channels_last
        self.feature_dim = int(backbone.num_features)
        self.joint_forward = bool(method.get("joint_forward", False))
        self.log_every = max(1, log_every_n_steps)
        self.num_local_views, self.local_pipeline = local_view_pipeline(
            self.pipeline, method.get("local_views")
        )
        # First step whose loss was not finite; -1 while all are. Lives on the device.
        self.register_buffer("first_bad_step", torch.tensor(-1), persistent=False)
        # The transform entries of the task's op (an entry is named by its op, or has
        # ``op:``) and their parameters, in each global-view pipeline.
        steps = [(entry, params) for view_pipeline in self.view_pipelines
                 for entry, entry_op, params in view_pipeline.spec if entry_op == op]  # fmt: skip
        self.pretext_entries = {entry for entry, _ in steps}
        # Drawn from a forked random state: the method's own heads, built after this, get the
        # initial weights they get without a pretext task.
        with torch.random.fork_rng(devices=[]):
            self.pretext = create_pretext(
                pretext, [params for _, params in steps], feature_dim=self.feature_dim,
                backbone=backbone, view_size=self.pipeline.size,
            )  # fmt: skip
        self._tap: FeatureTap | None = None  # set during a training step with a pretext task
        # the online probe's input (sslbench.eval.online_probe sets keep_online_features): not a
        # parameter or buffer, never in the method's optimiser or state_dict
        self.keep_online_features = False
        self.online_features: Tensor | None = None

    # -- what a method implements -------------------------------------------------------
    def training_loss(self, views: Views) -> Tensor:
        """The method's loss for one batch of views."""
        raise NotImplementedError

    # -- shared machinery -----------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict[str, Tensor]:
        """State a checkpoint must hold that the state_dict leaves out: every memory bank
        (lightly keeps them in non-persistent buffers). A method with more (a loss's running
        statistics kept as a plain attribute) adds it to this."""
        return bank_state(self)

    def load_extra_checkpoint_state(self, state: Mapping[str, Tensor]) -> None:
        """Put :meth:`extra_checkpoint_state`'s state back."""
        load_bank_state(self, state)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[EXTRA_STATE_KEY] = self.extra_checkpoint_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it loads the state_dict: the banks are not in it.
        self.load_extra_checkpoint_state(checkpoint.get(EXTRA_STATE_KEY, {}))

    def float32_loss(self, loss_fn: Callable[..., Any], *args: Any) -> Tensor:
        """Call ``loss_fn`` in float32 outside autocast (bf16 overflows, e.g. in Sinkhorn).
        Floating-point tensor arguments, also inside lists and tuples, are cast to float32
        (integer ones, such as class labels, stay as they are)."""

        def to_float(value: Any) -> Any:
            if isinstance(value, Tensor) and value.is_floating_point():
                return value.float()
            if isinstance(value, (list, tuple)):
                return type(value)(to_float(v) for v in value)
            return value

        with torch.autocast(device_type=self.device.type, enabled=False):
            return loss_fn(*(to_float(a) for a in args))

    def feature_map(self, x: Tensor) -> Tensor:
        """The backbone's feature map of views x ((N, C, h, w) for CNNs), kept for the
        pretext heads during a training step that has them."""
        fmap = self.backbone.forward_features(x)
        if self._tap is not None:
            self._tap.record(x, fmap)
        return fmap

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features (N, D) of views x: ``self.backbone(x)``, computed as
        timm does (feature map, then pooling), so the feature map is seen by the pretext heads."""
        return self.backbone.forward_head(self.feature_map(x), pre_logits=True)

    def forward_views(
        self, fn: Callable[[Tensor], Tensor], views: Sequence[Tensor]
    ) -> list[Tensor]:
        """``fn`` applied to each view: one call per view (the reference: lightly's benchmark,
        and the official BYOL, SimSiam, Barlow Twins, VICReg and VICRegL code), or with
        ``method.joint_forward`` one call on each group of same-sized views concatenated
        (SimCLR's TF code and SwAV's; fewer, larger kernels on a GPU).

        The two are not the same computation: batch norm in training mode normalises over
        the samples of one call, N per view or 2N (or more) for the views together.
        """
        if not self.joint_forward:
            return [fn(view) for view in views]
        out: list[Tensor] = []
        for _, same_size in itertools.groupby(views, key=lambda view: view.shape):
            group = list(same_size)
            joined = torch.cat(group)
            if self._tap is not None:
                self._tap.joined(joined, group)
            out += fn(joined).split([view.shape[0] for view in group])
        return out

    def project_global_views(self, head: nn.Module, views: Views) -> tuple[Tensor, Tensor]:
        """Both global views through the backbone and ``head`` (see :meth:`forward_views`).
        Returns (z0, z1), each (N, D), and hands z0 to the collapse monitor."""
        z0, z1 = self.forward_views(lambda x: head(self.features(x)), views.global_views)
        self.monitor_embeddings(z0)
        return z0, z1

    def mask_generator(self) -> torch.Generator:
        """A generator on the method's device for this step's token masks, seeded from
        (seed, rank, epoch, step) like the views, on a stream of its own."""
        return make_generator(
            self.seed, self.device, self.global_rank, self.current_epoch, self.global_step,
            MASK_STREAM,
        )  # fmt: skip

    @property
    def view_maker(self) -> ViewMaker:
        """What makes the method's views of a batch (picklable, for DataLoader workers)."""
        return ViewMaker(
            pipelines=self.view_pipelines,
            local_pipeline=self.local_pipeline,
            num_global=self.num_global_views,
            num_local=self.num_local_views if self.local_pipeline is not None else 0,
            coordinates=self.needs_coordinates,
            seed=self.seed,
        )

    def make_views(
        self, images: Tensor, aspect: Tensor, class_labels: Tensor | None = None
    ) -> Views:
        """The views of a uint8 batch that the method's layout asks for, on its device."""
        views = self.view_maker(
            images, aspect, self.global_rank, self.current_epoch, self.global_step, class_labels
        )
        return self._in_memory_format(views)

    def _in_memory_format(self, views: Views) -> Views:
        return dataclasses.replace(
            views,
            global_views=[self._memory_format(v) for v in views.global_views],
            local_views=[self._memory_format(v) for v in views.local_views],
        )

    def _memory_format(self, view: Tensor) -> Tensor:
        if self.channels_last:
            return view.contiguous(memory_format=torch.channels_last)
        return view

    def monitor_embeddings(self, embeddings: Tensor) -> None:
        """Log collapse indicators of (N, D) embeddings: the std of the L2-normalised
        embeddings times sqrt(D) every step (averaged per epoch), and their effective rank
        every ``log_every`` steps. No host sync: Lightning reduces them at epoch end."""
        if self._trainer is None:  # called outside a Trainer (unit tests): nothing to log to
            return
        z = embeddings.detach().float()
        std = torch.nn.functional.normalize(z, dim=1).std(dim=0).mean() * math.sqrt(z.shape[1])
        n = z.shape[0]
        self.log("embedding_std_ratio", std, on_step=False, on_epoch=True, batch_size=n)
        if self.global_step % self.log_every == 0:
            rank = effective_rank(z)
            self.log("effective_rank", rank, on_step=False, on_epoch=True, batch_size=n)

    def on_train_epoch_end(self) -> None:
        self._raise_if_nonfinite()
        ratio = self.trainer.callback_metrics.get("embedding_std_ratio")
        if ratio is not None and float(ratio) < COLLAPSE_WARNING_RATIO:
            warnings.warn(
                f"embeddings are collapsing at epoch {self.current_epoch}: std of the "
                f"L2-normalised embeddings x sqrt(dim) = {float(ratio):.3f} "
                f"(about 1 when spread, 0 when collapsed)",
                stacklevel=1,
            )

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor] | Views, batch_idx: int) -> Tensor:
        if isinstance(batch, Views):  # made in DataLoader workers (data_path=workers, bench)
            return self.loss_of_views(self._in_memory_format(batch))
        images, aspect, labels = batch
        return self.loss_of_views(self.make_views(images, aspect, labels))

    def loss_of_views(self, views: Views) -> Tensor:
        """One step's loss from its views: the method's, plus the pretext task's; logged,
        and checked for non-finite values without a host sync."""
        n = views.global_views[0].shape[0]
        if self.pretext is None and not self.keep_online_features:
            loss = self.training_loss(views)
        else:  # the backbone's feature maps are kept for the pretext heads / online probe
            self._tap = FeatureTap()
            try:
                loss = self.training_loss(views)
                if self.keep_online_features:
                    self.online_features = self._pooled_first_view(views, self._tap)
                if self.pretext is not None:
                    method_loss = loss
                    pretext_loss, metrics = self.pretext(self.pretext_inputs(views, self._tap))
                    loss = method_loss + self.pretext.weight * pretext_loss
                    self.log("method_loss", method_loss, on_step=False, on_epoch=True,
                             batch_size=n)  # fmt: skip
                    for name, value in metrics.items():
                        self.log(f"pretext_{name}", value, on_step=False, on_epoch=True,
                                 batch_size=n)  # fmt: skip
            finally:
                self._tap = None
        self._flag_nonfinite(loss)
        self.log("train_loss", loss, prog_bar=True, on_epoch=True, batch_size=n)
        return loss

    @torch.no_grad()
    def _pooled_first_view(self, views: Views, tap: FeatureTap) -> Tensor | None:
        """Detached pooled features of the first global view, from the feature map the
        method's own forward left in ``tap``. If it left none (a masked ViT encodes only some
        patches), a ViT's come from a forward pass of its own, which changes nothing (no batch
        norm); a CNN's are None: an extra forward would move batch norm's running statistics."""
        view = views.global_views[0]
        fmap = tap.feature_map(view)
        if fmap is None and backbone_kind(self.backbone) == "vit":
            fmap = self.backbone.forward_features(view)
        if fmap is None:
            return None
        return self.backbone.forward_head(fmap.detach(), pre_logits=True)

    def pretext_inputs(self, views: Views, tap: FeatureTap) -> PretextInputs:
        """The views that carry the pretext op's labels (global first, then local), with
        their labels and the feature maps the method's backbone calls left in ``tap`` (a
        view the method did not pass through the backbone goes through it now)."""
        chosen: list[Tensor] = []
        labels: list[Tensor] = []
        for view_list, label_list in (
            (views.global_views, views.global_labels), (views.local_views, views.local_labels)
        ):  # fmt: skip
            for view, view_labels in zip(view_list, label_list, strict=True):
                found = [label for entry, label in view_labels.items()
                         if entry in self.pretext_entries]  # fmt: skip
                if found:
                    chosen.append(view)
                    labels.append(found[0])
        fmaps = []
        for view in chosen:
            fmap = tap.feature_map(view)
            fmaps.append(self.feature_map(view) if fmap is None else fmap)
        return PretextInputs(
            views=chosen,
            feature_maps=fmaps,
            labels=labels,
            pool=lambda fmap: self.backbone.forward_head(fmap, pre_logits=True),
            encode=lambda views: self.feature_map(self._memory_format(views)),
            spatial=lambda fmap: spatial_map(self.backbone, fmap),
        )

    def _flag_nonfinite(self, loss: Tensor) -> None:
        bad_now = ~torch.isfinite(loss.detach())
        first_time = bad_now & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(
            first_time, torch.full_like(self.first_bad_step, self.global_step), self.first_bad_step
        )
        if (self.global_step + 1) % self.check_every == 0:
            self._raise_if_nonfinite()

    def _raise_if_nonfinite(self) -> None:
        step = int(self.first_bad_step)  # the one host sync, every check_every steps
        if step >= 0:
            raise NonFiniteLossError(
                f"non-finite training loss at step {step} (epoch {self.current_epoch}); "
                f"try a lower method.optimizer.lr (now {self.method_cfg['optimizer']['lr']})"
            )


def symmetric_loss(
    criterion: Callable[[Tensor, Tensor], Tensor], p0: Tensor, p1: Tensor, t0: Tensor, t1: Tensor
) -> Tensor:
    """0.5 · (D(p0, t1) + D(p1, t0)): each view's prediction of the other view's target, the
    symmetric loss of SimSiam and BYOL (``criterion`` D: lightly's negative cosine)."""
    return 0.5 * (criterion(p0, t1) + criterion(p1, t0))
