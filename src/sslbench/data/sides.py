"""Where the decode-once caches live and at what side S a source is cached.

The rules, apart from the cache builder (:mod:`sslbench.data.cache`), because more than the
builder reads them: a run asks for :func:`requested_side`, and ``sslbench datasets list`` and
the grid's cost table (:mod:`sslbench.data.listing`) state the side and size a cache will have
before it is built. Nothing here decodes or writes; it needs only the
:class:`~sslbench.data.sources.Source` protocol.
"""

from __future__ import annotations

import os
from pathlib import Path

from .sources import Source

__all__ = [
    "FULL_DETAIL_MAX_SHORT_SIDE",
    "default_cache_root",
    "default_side",
    "requested_side",
    "side_for_pictures",
    "stored_side",
]


def default_cache_root() -> Path:
    """``$SSLBENCH_CACHE``, else ``~/.cache/sslbench/cache``."""
    return Path(os.environ.get("SSLBENCH_CACHE") or "~/.cache/sslbench/cache").expanduser()


#: Sources whose typical picture is at most this on its short side are cached with every
#: pixel of it (the -160 and -320 copies, CIFAR, STL-10, Fashion-MNIST); larger ones at twice
#: the crop side.
FULL_DETAIL_MAX_SHORT_SIDE = 320


def default_side(source: Source, image_size: int) -> int:
    """The cache side S when ``dataset.cache_size`` is null.

    Views are resampled from the cached S x S square, so S decides how much of the source's
    detail a crop keeps (the evaluation view too). S is the long side L of the source's
    typical picture (:meth:`Source.typical_size`) when its short side is at most
    ``FULL_DETAIL_MAX_SHORT_SIDE``: every pixel is kept along both axes (213 for a 213 x 160
    picture of imagenette2-160; 28 for Fashion-MNIST). Larger pictures are cached at
    min(L, 2 x image_size), at least twice the crop side along the short side (448 for the
    full-size Imagenette at 224 px), where a crop of 8% of a 500 x 375 picture (140 x 105
    pixels) keeps about 125 x 125 of them for its 224-px view. Sources of unknown picture
    sizes get 2 x image_size.
    """
    return side_for_pictures(source.typical_size(), image_size)


def side_for_pictures(typical: tuple[int, int] | None, image_size: int) -> int:
    """:func:`default_side`'s rule for a typical picture of (long, short) pixels (None:
    unknown) and a crop side ``image_size``."""
    if typical is None:
        return 2 * int(image_size)
    long, short = typical
    if short <= FULL_DETAIL_MAX_SHORT_SIDE:
        return int(long)
    return int(min(long, 2 * int(image_size)))


def requested_side(source: Source, cache_size: int | None, image_size: int) -> int:
    """The side a run asks the cache for: ``dataset.cache_size``, else :func:`default_side`."""
    return int(cache_size) if cache_size else default_side(source, image_size)


def stored_side(source: Source, size: int | None) -> int:
    """Side S stored in the cache: ``size``, but never more than ``source.max_side()``.

    ``size`` None stores the source's own side (sources of fixed-size images only).
    """
    cap = source.max_side()
    if size is None:
        if cap is None:
            raise ValueError(f"{source.name}: images vary in size, so a cache size is required")
        return cap
    if size < 1:
        raise ValueError(f"cache size must be positive, got {size}")
    return min(size, cap) if cap else size
