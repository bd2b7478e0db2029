"""Decoding a split's images into the cache being built, in this process or in several.

:func:`decode_split` fills the ``images.npy`` of a cache under construction (its layout:
:mod:`sslbench.data.cache_files`) with every image squashed to S x S, and the caller's
``labels`` and ``sizes`` arrays, and says which rows were filled and which files were skipped.

Sources that list their items (:meth:`Source.items`) are decoded by several processes when the
split is large: each worker decodes contiguous chunks and writes the pixels straight into the
``images.npy`` being built, returning only per-image flags, sizes and errors, so RAM stays
bounded whatever the dataset's size. Parallel and sequential builds give byte-identical files.

JPEG draft (``draft=True``; off by default, as the reference decodes in full): image files
are opened here with Pillow's ``draft``, so the JPEG decoder decodes at 1/2, 1/4 or 1/8 scale
(DCT scaling) when the result is still at least S on both sides, then squashed to S x S as any
image; most of a build's time is the full-size decode, which this cuts. Pictures under 2 S on
a side are decoded in full, as are other formats. ``sizes`` keeps the original (width, height)
read before the draft. The pixels differ slightly from a full-size decode, so such caches have
their own fingerprint (:func:`sslbench.data.cache_files.cache_fingerprint`).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile
from tqdm.auto import tqdm

from .folders import exit_with_parent, release_inherited_locks
from .sources import Source, as_8bit

__all__ = ["PARALLEL_MIN_ITEMS", "decode_split"]

#: Splits with more items than this are decoded by several processes (when workers > 1).
PARALLEL_MIN_ITEMS = 256


def decode_split(
    source: Source,
    split: str,
    items: list[tuple[str, int]] | None,
    path: Path,
    side: int,
    labels: np.ndarray,
    sizes: np.ndarray,
    bar: tqdm,
    strict: bool,
    workers: int,
    draft: bool,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode ``split`` into the .npy at ``path`` (uint8 (capacity, 3, side, side), already
    allocated), filling ``labels`` and ``sizes``; JPEG files as drafts if ``draft``.

    ``items``: the source's :meth:`Source.items` for the split, or None. Large listed splits
    go to ``workers`` processes, where row i holds item i; others are decoded here, filling
    rows from the top. Returns the mask of filled rows and the skipped ``(name, reason)``
    pairs in order; ``strict`` raises at the first unreadable image instead.
    """
    if items is not None and workers > 1 and len(items) > PARALLEL_MIN_ITEMS:
        return _decode_parallel(
            source, items, path, side, labels, sizes, workers, bar, strict, draft
        )
    images = np.load(path, mmap_mode="r+")
    keep, skipped = _decode_sequential(source, split, images, labels, sizes, bar, strict, draft)
    images.flush()
    del images
    return keep, skipped


def _open_file(path: str, side: int) -> tuple[Image.Image, tuple[int, int]]:
    """``sources.open_image(path)`` with a JPEG draft for a cache of side ``side``; also
    returns the original (width, height), read before the draft shrinks ``image.size``.

    Pillow picks the largest scale 1/2, 1/4 or 1/8 that keeps both sides >= ``side`` (none
    for a picture under 2 x ``side`` on a side), so the squash to ``side`` never upsamples a
    draft. Other formats are decoded as by ``open_image``.
    """
    with open(path, "rb") as f:
        image = Image.open(f)
        original = image.size
        if isinstance(image, JpegImageFile):  # JPEG and MPO (camera JPEGs)
            image.draft("RGB", (side, side))  # RGB: keeps the mode (L stays L)
            width, height = image.size
            if width < min(side, original[0]) or height < min(side, original[1]):
                f.seek(0)  # never below the cache side (Pillow guarantees it; checked here)
                image = Image.open(f)
        image.load()
    return as_8bit(image), original


def _to_chw(
    image: np.ndarray | Image.Image, side: int, original: tuple[int, int] | None = None
) -> tuple[np.ndarray, int, int]:
    """Squash one image to uint8 (3 or 1, side, side); also return its original width, height
    (``original`` when given: the size of a JPEG before its draft, else the image's own)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
        ):
            raise ValueError(f"expected HxW or HxWx3 uint8 image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if (width, height) != (side, side):
            image = Image.fromarray(image)
    else:
        width, height = image.size
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
    if original is not None:
        width, height = original
    if isinstance(image, Image.Image):
        if image.size != (side, side):
            # LANCZOS is antialiased when downscaling, unlike the PIL "nearest" default.
            image = image.resize((side, side), Image.Resampling.LANCZOS)
        image = np.asarray(image)
    chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return chw, width, height


def _reason(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _decode_sequential(
    source: Source,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    sizes: np.ndarray,
    bar: tqdm,
    strict: bool,
    draft: bool,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode with ``iter_images`` in this process, filling rows from the top (with ``draft``:
    the items, each opened by :func:`_open_file`, as ``iter_images`` would decode them).

    Returns the mask of filled rows and the skipped ``(name, reason)`` pairs."""
    capacity = len(labels)
    skipped: list[tuple[str, str]] = []

    def on_error(name: str, error: Exception) -> None:
        if strict:
            raise ValueError(f"unreadable image {name}: {_reason(error)}") from None
        skipped.append((name, _reason(error)))
        bar.update(1)

    side = images.shape[-1]

    def decoded() -> Iterator[tuple[np.ndarray | Image.Image, int, tuple[int, int] | None]]:
        if not draft:
            for image, label in source.iter_images(split, on_error=on_error):
                yield image, label, None
            return
        for item, label in source.items(split) or []:
            try:
                image, original = _open_file(item, side)
            except Exception as err:  # PIL raises many types for corrupt files
                on_error(item, err)
                continue
            yield image, label, original

    n = 0
    for image, label, original in decoded():
        if n == capacity:
            raise RuntimeError(f"{source!r} split {split!r} grew while being cached")
        chw, width, height = _to_chw(image, side, original)
        images[n] = chw  # greyscale (1, S, S) broadcasts to 3 identical channels
        labels[n], sizes[n] = label, (width, height)
        n += 1
        bar.update(1)
    bar.update(capacity - n - len(skipped))  # count() was an upper bound
    return np.arange(capacity) < n, skipped


def _mp_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux (cheap, nothing to pickle); ``spawn`` elsewhere."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _decode_parallel(
    source: Source,
    items: list[tuple[str, int]],
    path: Path,
    side: int,
    labels: np.ndarray,
    sizes: np.ndarray,
    workers: int,
    bar: tqdm,
    strict: bool,
    draft: bool,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode ``items`` in worker processes, each writing its rows into the .npy at ``path``.

    Row i holds item i (or stays empty if it is unreadable). Returns the mask of decoded rows
    and the skipped ``(name, reason)`` pairs in item order."""
    n = len(items)
    chunk = max(16, min(256, -(-n // (workers * 8))))  # ~8 chunks per worker, for the bar
    starts = range(0, n, chunk)
    labels[:] = [label for _, label in items]
    ok = np.zeros(n, dtype=bool)
    errors: list[tuple[int, str, str]] = []
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(starts)),
        mp_context=_mp_context(),
        initializer=_init_worker,
        initargs=(source, draft),
    )
    try:
        futures = {
            executor.submit(
                _decode_rows, [item for item, _ in items[s : s + chunk]], s, str(path), side, strict
            ): s
            for s in starts
        }
        for future in as_completed(futures):
            s = futures.pop(future)
            chunk_ok, chunk_sizes, chunk_errors = future.result()
            ok[s : s + len(chunk_ok)] = chunk_ok
            sizes[s : s + len(chunk_ok)] = chunk_sizes
            errors += chunk_errors
            bar.update(len(chunk_ok))
            if strict and chunk_errors:
                break
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    if strict and errors:
        # Workers take chunks in order, so every chunk before the failing one has run by now
        # (cancelled ones all come after it): the smallest row is the split's first bad item.
        errors += [e for f in futures if not f.cancelled() for e in f.result()[2]]
        _, name, reason = min(errors)
        raise ValueError(f"unreadable image {name}: {reason}")
    return ok, [(name, reason) for _, name, reason in sorted(errors)]


_worker_source: Source | None = None
_worker_draft = False  # open JPEG files as drafts (_open_file) instead of source.decode


def _init_worker(source: Source, draft: bool = False) -> None:
    global _worker_source, _worker_draft
    release_inherited_locks()  # forked while the parent holds the build's lock
    exit_with_parent()
    _worker_source, _worker_draft = source, draft


def _decode_rows(
    items: list[str], start: int, path: str, side: int, strict: bool
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str, str]]]:
    """Worker: decode ``items`` into rows ``start, start + 1, ...`` of the .npy at ``path``
    (JPEG files as drafts when the pool was started with ``draft``: :func:`_init_worker`).

    Only small per-image results travel back: ok flags (k,), original sizes (k, 2) and
    ``(row, name, reason)`` of unreadable items; the pixels go through the file. The mapping
    is opened per chunk and closed after, so a worker's memory does not grow with the split.
    """
    assert _worker_source is not None, "worker not initialised"
    images = np.load(path, mmap_mode="r+")
    ok = np.zeros(len(items), dtype=bool)
    sizes = np.zeros((len(items), 2), dtype=np.int32)
    errors: list[tuple[int, str, str]] = []
    try:
        for k, item in enumerate(items):
            original = None
            try:
                if _worker_draft:
                    image, original = _open_file(item, side)
                else:
                    image = _worker_source.decode(item)
            except Exception as e:  # PIL raises many types for corrupt files
                errors.append((start + k, str(item), _reason(e)))
                if strict:
                    break
                continue
            chw, width, height = _to_chw(image, side, original)
            images[start + k] = chw
            ok[k], sizes[k] = True, (width, height)
        images.flush()
    finally:
        del images
    return ok, sizes, errors
