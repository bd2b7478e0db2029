"""Decode-once cache: each (source, split, side) is decoded a single time into uint8 ``.npy`` files.

Decoding JPEG/PNG every epoch caps data throughput, so :func:`load_or_build` decodes a split
once into ``<cache_root>/<source.cache_key()>/<split>-<S>/`` (the files and how a finished
cache is opened: :mod:`sslbench.data.cache_files`; the decoding itself, in several processes
for large splits and with optional JPEG drafts: :mod:`sslbench.data.cache_decode`).

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
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sslbench.host import available_cores, reserve

from .cache_decode import decode_split
from .cache_files import FORMAT_VERSION, CachedSplit, cache_dir, cache_fingerprint, open_cache
from .folders import exclusive, partial_dir, publish, remove_stale
from .sides import stored_side
from .sources import Source

__all__ = ["load_or_build"]

#: RAM budget of one streamed copy step when skipped rows are removed from images.npy.
_COPY_BYTES = 64 << 20


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
    side (:mod:`sslbench.data.cache_decode`), for sources that say their items are image files
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
    # The source says whether its items are image files the decoder may open as drafts.
    draft = jpeg_draft and source.allows_jpeg_draft()
    fingerprint = cache_fingerprint(source.fingerprint(split), draft)
    cached = open_cache(target, fingerprint, side)
    if cached is not None:
        return _strictly(cached, strict)

    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target, f"another process building {target}", progress):
        cached = open_cache(target, fingerprint, side)  # built by the process we waited for?
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
        cached = open_cache(target, fingerprint, side)
    if cached is None:
        raise RuntimeError(f"cache at {target} was replaced while being built; run again")
    return cached


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


def _worker_count(workers: int | None) -> int:
    if workers is None:
        return min(available_cores(), 8)
    if workers < 1:
        raise ValueError(f"workers must be >= 1 or None, got {workers}")
    return workers


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
    images_file = out / "images.npy"
    images = np.lib.format.open_memmap(
        images_file, mode="w+", dtype=np.uint8, shape=(capacity, 3, side, side)
    )
    reserve(images_file, images_file.stat().st_size)  # full disk: said now
    del images  # the decoders map the file themselves
    labels = np.full(capacity, -1, dtype=np.int64)
    sizes = np.zeros((capacity, 2), dtype=np.int32)
    bar = tqdm(
        total=capacity, desc=f"caching {source.name}/{split}", unit="img", disable=not progress
    )
    with bar:
        keep, skipped = decode_split(
            source, split, items, images_file, side, labels, sizes, bar, strict, workers, draft
        )
    n = int(keep.sum())
    if n == 0:
        raise ValueError(f"{source!r} split {split!r}: no readable images")
    if n < capacity:  # files were skipped: copy the kept rows into a file of the right size
        _compact_npy(images_file, keep)
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
        "jpeg_draft": draft,  # JPEG files decoded as drafts (cache_decode)
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
