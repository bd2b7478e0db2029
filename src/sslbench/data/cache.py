"""Decode-once cache: each (source, split, side) is decoded a single time into uint8 ``.npy`` files.

Decoding JPEG/PNG every epoch caps data throughput, so :func:`load_or_build` decodes a split
once into ``<cache_root>/<source.cache_key()>/<split>-<S>/``::

    images.npy  uint8 (N, 3, S, S), C-contiguous, opened memory-mapped
    labels.npy  int64 (N,), -1 for unlabeled images
    sizes.npy   int32 (N, 2), original (width, height) of each image
    meta.json   source, split, count, stored side ``size`` and ``requested_size``, fingerprint,
                ``jpeg_draft``, classes, format version, skipped files (``skipped``,
                ``skipped_reasons``)

Images are squashed to S x S (aspect ratio kept in ``sizes`` for aspect-aware crops), with S the
requested size (by default :func:`~sslbench.data.sides.default_side`: the source's own detail)
but never more than :meth:`Source.max_side` (no upsampling past a source of fixed-size squares).
A build writes into ``<dir>.partial-<pid>-<random>`` and is renamed into place only when
complete, so a killed build never leaves a directory that looks like a finished cache, and
readers of a finished cache need no lock. Builders take an exclusive ``flock`` on ``<dir>.lock``
(kept forever), so two runs of a grid never build the same cache at once: the second waits, then
loads what the first built. Leftovers of killed builds are removed by the next build once their
process id is dead (checked on this host only, so concurrent builders on several hosts sharing
one cache directory are not supported).

Sources that list their items (:meth:`Source.items`) are decoded by several processes when the
split is large: each worker decodes contiguous chunks and writes the pixels straight into the
``images.npy`` being built, returning only per-image flags, sizes and errors, so RAM stays
bounded whatever the dataset's size. Parallel and sequential builds give byte-identical files.

JPEG draft (``jpeg_draft=True``; off by default, as the reference decodes in full): image
files are opened here with Pillow's ``draft``, so the JPEG decoder decodes at 1/2, 1/4 or 1/8
scale (DCT scaling) when the result is still at least S on both sides, then squashed to S x S as
any image; most of a build's time is the full-size decode, which this cuts. Pictures under 2 S on
a side are decoded in full, as are other formats. ``sizes`` keeps the original (width, height)
read before the draft. The pixels differ slightly from a full-size decode, so such caches have
their own fingerprint (see :func:`load_or_build`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile
from tqdm.auto import tqdm

from sslbench.host import available_cores, reserve

from .folders import (
    exclusive,
    exit_with_parent,
    partial_dir,
    publish,
    release_inherited_locks,
    remove_stale,
)
from .sides import default_cache_root, stored_side
from .sources import Source, as_8bit

__all__ = [
    "FORMAT_VERSION",
    "CachedSplit",
    "cache_dir",
    "load_or_build",
]

#: Bump when the on-disk layout or the decoding changes; older caches are then rebuilt.
FORMAT_VERSION = 1

#: Splits with more items than this are decoded by several processes (when workers > 1).
PARALLEL_MIN_ITEMS = 256

#: RAM budget of one streamed copy step when skipped rows are removed from images.npy.
_COPY_BYTES = 64 << 20


@dataclass
class CachedSplit:
    """A decoded split: memory-mapped images plus per-image labels and original sizes."""

    images: np.ndarray  # uint8 (N, 3, S, S), memory-mapped read-only
    labels: np.ndarray  # int64 (N,)
    sizes: np.ndarray  # int32 (N, 2): original (width, height)
    meta: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    path: Path = Path()

    @property
    def aspect(self) -> np.ndarray:
        """float32 (N,): original width / height of each image."""
        return (self.sizes[:, 0] / self.sizes[:, 1]).astype(np.float32)

    @property
    def side(self) -> int:
        """Stored side S."""
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap would copy the whole array (e.g. to spawned DataLoader workers);
        # send the file name instead and map it again on the other side.
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = Path(self.images.filename)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["images"], Path):
            state["images"] = np.load(state["images"], mmap_mode="r")
        self.__dict__.update(state)


def cache_dir(source: Source, split: str, size: int | None, cache_root: Path | None = None) -> Path:
    """Directory holding the cache of ``split`` of ``source`` at the stored side for ``size``."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    return root / source.cache_key() / f"{split}-{stored_side(source, size)}"


def load_or_build(
    source: Source,
    split: str,
    size: int | None,
    cache_root: Path | None = None,
    progress: bool = True,
    strict: bool = False,
    workers: int | None = None,
    jpeg_draft: bool = False,
) -> CachedSplit:
    """Return the cached ``split`` of ``source``, decoding it first if needed.

    The cache is reused when its fingerprint, stored side and format version match; otherwise
    it is rebuilt, by one process at a time (others wait for it, then load its result).
    Unreadable images are skipped with one ``sslbench: warning:`` line on standard error
    (:func:`_skipped_message`) and listed in ``meta["skipped"]`` (reasons
    in ``meta["skipped_reasons"]``); ``strict=True`` raises at the first instead. ``workers``:
    decoding processes for sources with :meth:`Source.items` (None: ``min(CPUs, 8)``; 1: in
    this process). ``progress`` shows a progress bar and the waiting message.

    ``jpeg_draft``: decode JPEG files at a reduced scale that is still at least the stored
    side (module docstring), for sources that say their items are image files
    (:meth:`Source.allows_jpeg_draft`). Cache key: the folder is the same either way; a
    drafted cache's fingerprint is the source's fingerprint hashed with ``"jpeg-draft"``, so a
    cache built one way is rebuilt, never reused, when asked for the other. Full-size
    decoding (``jpeg_draft=False``) and sources that are never drafted (arrays:
    Fashion-MNIST, CIFAR, STL-10) keep the fingerprint caches had before drafts existed, so
    their caches stay valid.
    """
    n_workers = _worker_count(workers)
    side = stored_side(source, size)
    target = cache_dir(source, split, size, cache_root)
    # The source says whether its items are image files that _open_file may open as drafts.
    draft = jpeg_draft and source.allows_jpeg_draft()
    fingerprint = _cache_fingerprint(source.fingerprint(split), draft)
    cached = _load(target, fingerprint, side)
    if cached is not None:
        return _strictly(cached, strict)

    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target, f"another process building {target}", progress):
        cached = _load(target, fingerprint, side)  # built by the process we waited for?
        if cached is not None:
            return _strictly(cached, strict)
        remove_stale(target)
        partial = partial_dir(target)
        partial.mkdir()
        try:
            _build(
                source, split, side, size, fingerprint, partial, progress, strict, n_workers, draft
            )
            publish(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)  # no-op after a successful publish
        cached = _load(target, fingerprint, side)
    if cached is None:
        raise RuntimeError(f"cache at {target} was replaced while being built; run again")
    return cached


def _cache_fingerprint(source_fingerprint: str, draft: bool) -> str:
    """The fingerprint stored in (and checked against) meta.json: the source's own for a
    full-size decode, as before drafts existed; a hash of it and ``"jpeg-draft"`` for a
    drafted one, whose pixels differ."""
    if not draft:
        return source_fingerprint
    return hashlib.sha256(f"{source_fingerprint}\0jpeg-draft".encode()).hexdigest()


def _strictly(cached: CachedSplit, strict: bool) -> CachedSplit:
    """A cache built earlier without ``strict`` may lack unreadable images; a strict run
    fails on them as a strict build would (the cache itself is the same either way)."""
    skipped = cached.meta.get("skipped") or []
    if strict and skipped:
        reason = (cached.meta.get("skipped_reasons") or {}).get(skipped[0], "unreadable")
        raise ValueError(
            f"cannot read {skipped[0]} ({reason}); the cache at {cached.path} was built "
            f"without it and {len(skipped) - 1} other unreadable images (dataset.strict=false "
            "skips them)"
        )
    return cached


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


def _worker_count(workers: int | None) -> int:
    if workers is None:
        return min(available_cores(), 8)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers}")
    return workers


def _load(path: Path, fingerprint: str, side: int) -> CachedSplit | None:
    """The cache in ``path`` if it is complete and current, else None."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if (
            meta.get("format_version") != FORMAT_VERSION
            or meta.get("fingerprint") != fingerprint
            or meta.get("size") != side
        ):
            return None
        images = np.load(path / "images.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        sizes = np.load(path / "sizes.npy")
    except (OSError, ValueError):  # missing/garbled files: treat as absent and rebuild
        return None
    n = meta.get("count")
    if images.shape != (n, 3, side, side) or labels.shape != (n,) or sizes.shape != (n, 2):
        return None
    return CachedSplit(images, labels, sizes, meta, list(meta.get("classes", [])), path)


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


def _build(
    source: Source,
    split: str,
    side: int,
    requested: int | None,
    fingerprint: str,
    out: Path,
    progress: bool,
    strict: bool,
    workers: int,
    draft: bool,
) -> None:
    """Decode ``split`` into ``out`` (JPEG files as drafts if ``draft``); meta.json is
    written last."""
    items = source.items(split)
    capacity = len(items) if items is not None else source.count(split)
    # Images go straight to a disk-backed memmap so RAM use does not grow with the dataset.
    images = np.lib.format.open_memmap(
        out / "images.npy", mode="w+", dtype=np.uint8, shape=(capacity, 3, side, side)
    )
    reserve(out / "images.npy", (out / "images.npy").stat().st_size)  # full disk: said now
    labels = np.full(capacity, -1, dtype=np.int64)
    sizes = np.zeros((capacity, 2), dtype=np.int32)
    bar = tqdm(
        total=capacity, desc=f"caching {source.name}/{split}", unit="img", disable=not progress
    )
    with bar:
        if items is not None and workers > 1 and len(items) > PARALLEL_MIN_ITEMS:
            del images  # the workers map the file themselves
            keep, skipped = _decode_parallel(
                source, items, out / "images.npy", side, labels, sizes, workers, bar, strict, draft
            )
        else:
            keep, skipped = _decode_sequential(
                source, split, images, labels, sizes, bar, strict, draft
            )
            images.flush()
            del images
    n = int(keep.sum())
    if n == 0:
        raise ValueError(f"{source!r} split {split!r}: no readable images")
    if n < capacity:  # files were skipped: copy the kept rows into a file of the right size
        _compact_npy(out / "images.npy", keep)
    if skipped:
        # One line of sslbench's own, whoever called: a Python warning shows a file, a line
        # number and a line of sslbench's source, which tell the user nothing.
        print(f"sslbench: warning: {_skipped_message(source, split, skipped)}", file=sys.stderr)

    np.save(out / "labels.npy", labels[keep])
    np.save(out / "sizes.npy", sizes[keep])
    meta = {
        "format_version": FORMAT_VERSION,
        "source": source.name,
        "source_path": str(source.path),
        "split": split,
        "count": n,
        "size": side,
        "requested_size": requested,
        "fingerprint": fingerprint,
        "jpeg_draft": draft,  # JPEG files decoded as drafts (_open_file)
        "classes": list(source.classes),
        "created": datetime.now(timezone.utc).isoformat(),
        "skipped": [name for name, _ in skipped],
        "skipped_reasons": dict(skipped),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


#: Unreadable files named in the warning; the others are counted (all are in meta.json).
SKIPPED_NAMED = 3


def _skipped_message(source: Source, split: str, skipped: list[tuple[str, str]]) -> str:
    """``folder/train: skipped 2 unreadable images (a/x.jpg, b/y.png), ...``: how many, the
    first :data:`SKIPPED_NAMED` (relative to the source's folder), and what happened."""
    names = [_relative(name, source.path) for name, _ in skipped[:SKIPPED_NAMED]]
    more = f" and {len(skipped) - SKIPPED_NAMED} more" if len(skipped) > SKIPPED_NAMED else ""
    images = "image" if len(skipped) == 1 else "images"
    return (
        f"{source.name}/{split}: skipped {len(skipped)} unreadable {images} "
        f"({', '.join(names)}{more}); the run goes on without them, each listed with its "
        "reason in the cache's meta.json (dataset.strict=true stops at the first instead)"
    )


def _relative(name: str, root: Path) -> str:
    try:
        return Path(name).relative_to(root).as_posix()
    except ValueError:  # not a path under the source's folder (a member name, ...)
        return name


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


def _compact_npy(path: Path, keep: np.ndarray) -> None:
    """Keep only the rows of an .npy array where ``keep`` is True, in order.

    Streams in steps of about ``_COPY_BYTES`` (bounded RAM) into a new file that replaces it.
    """
    src = np.load(path, mmap_mode="r")
    rows = np.flatnonzero(keep)
    tmp = path.with_suffix(".tmp.npy")
    dst = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=src.dtype, shape=(len(rows), *src.shape[1:])
    )
    step = max(1, _COPY_BYTES // max(1, src[:1].nbytes))
    for start in range(0, len(rows), step):
        picked = rows[start : start + step]
        first, last = int(picked[0]), int(picked[-1])
        if last - first + 1 == len(picked):  # a contiguous run: one slice, no fancy index
            dst[start : start + len(picked)] = src[first : last + 1]
        else:
            dst[start : start + len(picked)] = src[picked]
    dst.flush()
    del src, dst
    os.replace(tmp, path)
