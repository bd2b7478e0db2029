"""Decode-once cache: each (source, split, side) is decoded a single time into uint8 ``.npy`` files.

Decoding JPEG/PNG every epoch caps data throughput, so :func:`load_or_build` decodes a split
once into ``<cache_root>/<source.cache_key()>/<split>-<S>/``::

    images.npy  uint8 (N, 3, S, S), C-contiguous, opened memory-mapped
    labels.npy  int64 (N,), -1 for unlabeled images
    sizes.npy   int32 (N, 2), original (width, height) of each image
    meta.json   source, split, count, S, fingerprint, classes, format version, skipped files

Images are squashed to S x S (aspect ratio kept in ``sizes`` for aspect-aware crops). A build
writes into ``<dir>.partial-<pid>-<random>`` and is renamed into place only when complete, so a
killed build never leaves a directory that looks like a finished cache. Leftovers are removed
by the next build once their process id is dead (checked on this host only, so concurrent
builders on several hosts sharing one cache directory are not supported).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .sources import Source

__all__ = ["FORMAT_VERSION", "CachedSplit", "cache_dir", "default_cache_root", "load_or_build"]

#: Bump when the on-disk layout or the decoding changes; older caches are then rebuilt.
FORMAT_VERSION = 1


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


def default_cache_root() -> Path:
    """``$SSLBENCH_CACHE``, else ``~/.cache/sslbench/cache``."""
    return Path(os.environ.get("SSLBENCH_CACHE") or "~/.cache/sslbench/cache").expanduser()


def stored_side(source: Source, size: int | None) -> int:
    """Side S stored in the cache: never larger than a fixed-size source's images."""
    natural = source.natural_size()
    if size is None:
        if natural is None:
            raise ValueError(f"{source.name}: images vary in size, so a cache size is required")
        return natural
    if size < 1:
        raise ValueError(f"cache size must be positive, got {size}")
    return min(size, natural) if natural else size


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
) -> CachedSplit:
    """Return the cached ``split`` of ``source``, decoding it first if needed.

    The cache is reused when its fingerprint, stored side and format version match; otherwise
    it is rebuilt. Unreadable images are skipped with a warning and listed in ``meta["skipped"]``
    (``strict=True`` raises instead).
    """
    side = stored_side(source, size)
    target = cache_dir(source, split, size, cache_root)
    fingerprint = source.fingerprint(split)
    cached = _load(target, fingerprint, side)
    if cached is not None:
        return cached

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir()
    try:
        _build(source, split, side, fingerprint, partial, progress, strict)
        _publish(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # no-op after a successful publish
    cached = _load(target, fingerprint, side)
    if cached is None:
        raise RuntimeError(f"cache at {target} was replaced while being built; run again")
    return cached


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: exists but belongs to someone else
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Delete leftovers (``.partial-*``, ``.old-*``) of builds whose process is gone."""
    for leftover in target.parent.glob(f"{target.name}.*-*-*"):
        kind, _, rest = leftover.name[len(target.name) + 1 :].partition("-")
        pid = rest.split("-")[0]
        if kind in ("partial", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _publish(partial: Path, target: Path) -> None:
    """Move a finished build into place, replacing (then deleting) any previous cache."""
    try:
        os.rename(partial, target)
        return
    except OSError:
        if not target.exists():
            raise
    # rename() cannot replace a non-empty directory: move the old one aside first. Readers that
    # still map the old files keep working, as unlinked files stay valid while mapped.
    old = target.with_name(f"{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(target, old)
    os.rename(partial, target)
    shutil.rmtree(old, ignore_errors=True)


def _to_chw(image: np.ndarray | Image.Image, side: int) -> tuple[np.ndarray, int, int]:
    """Squash one image to uint8 (3 or 1, side, side); also return its original width, height."""
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
    if isinstance(image, Image.Image):
        if image.size != (side, side):
            # LANCZOS is antialiased when downscaling, unlike the PIL "nearest" default.
            image = image.resize((side, side), Image.Resampling.LANCZOS)
        image = np.asarray(image)
    chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return chw, width, height


def _build(
    source: Source,
    split: str,
    side: int,
    fingerprint: str,
    out: Path,
    progress: bool,
    strict: bool,
) -> None:
    """Decode ``split`` into ``out`` one image at a time; meta.json is written last."""
    capacity = source.count(split)
    # Images go straight to a disk-backed memmap so RAM use does not grow with the dataset.
    images = np.lib.format.open_memmap(
        out / "images.npy", mode="w+", dtype=np.uint8, shape=(capacity, 3, side, side)
    )
    labels = np.empty(capacity, dtype=np.int64)
    sizes = np.empty((capacity, 2), dtype=np.int32)
    skipped: list[str] = []

    def on_error(name: str, error: Exception) -> None:
        reason = " ".join(str(error).split()) or type(error).__name__
        if strict:
            raise ValueError(f"unreadable image {name}: {reason}") from None
        warnings.warn(f"skipping unreadable image {name}: {reason}", stacklevel=2)
        skipped.append(name)

    n = 0
    bar = tqdm(
        total=capacity, desc=f"caching {source.name}/{split}", unit="img", disable=not progress
    )
    with bar:
        for image, label in source.iter_images(split, on_error=on_error):
            if n == capacity:
                raise RuntimeError(f"{source!r} split {split!r} grew while being cached")
            chw, width, height = _to_chw(image, side)
            images[n] = chw  # greyscale (1, S, S) broadcasts to 3 identical channels
            labels[n], sizes[n] = label, (width, height)
            n += 1
            bar.update(1)
        bar.update(capacity - n)  # skipped files
    if n == 0:
        raise ValueError(f"{source!r} split {split!r}: no readable images")
    images.flush()
    del images
    if n < capacity:  # files were skipped: copy the filled prefix into a file of the right size
        _truncate_npy(out / "images.npy", n)

    np.save(out / "labels.npy", labels[:n])
    np.save(out / "sizes.npy", sizes[:n])
    meta = {
        "format_version": FORMAT_VERSION,
        "source": source.name,
        "source_path": str(source.path),
        "split": split,
        "count": n,
        "size": side,
        "fingerprint": fingerprint,
        "classes": list(source.classes),
        "created": datetime.now(timezone.utc).isoformat(),
        "skipped": skipped,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def _truncate_npy(path: Path, n: int, chunk: int = 4096) -> None:
    """Shrink an .npy array to its first ``n`` rows, streaming in chunks (bounded RAM)."""
    src = np.load(path, mmap_mode="r")
    tmp = path.with_suffix(".tmp.npy")
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=src.dtype, shape=(n, *src.shape[1:]))
    for start in range(0, n, chunk):
        dst[start : start + chunk] = src[start : min(n, start + chunk)]
    dst.flush()
    del src, dst
    os.replace(tmp, path)
