"""The random augmentation ops by name: the one place an op is registered.

Every op works on a whole float32 batch ``x`` of shape (N, 3, H, W) with values in [0, 1] and
gives each sample its own random parameters (see ``batching``); an op that fires with
probability p is computed for the whole batch and selected per sample. A new op is one
function (in ``geometric`` or ``photometric``) plus one line here, under the name its
parameters have in ``params.OP_PARAMS``. ``resized_crop`` needs the aspect and the output
size, so the pipeline calls it directly (see ``crops``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .geometric import hflip, lorot, region_confusion, rotate, rotate90, vflip
from .photometric import color_jitter, gaussian_blur_op, grayscale, normalize, solarize

#: op(x, gen, params) -> x, or (x, labels) for the ops in ``params.LABELLED_OPS``.
OPS: dict[str, Callable[..., Tensor | tuple[Tensor, Tensor]]] = {
    "hflip": hflip,
    "vflip": vflip,
    "rotate90": rotate90,
    "rotate": rotate,
    "color_jitter": color_jitter,
    "grayscale": grayscale,
    "gaussian_blur": gaussian_blur_op,
    "solarize": solarize,
    "normalize": normalize,
    "lorot": lorot,
    "region_confusion": region_confusion,
}
