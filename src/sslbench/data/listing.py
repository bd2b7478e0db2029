"""What ``sslbench datasets list`` shows: each dataset of the catalogue, whether its files are
here, and the side and size of its decode-once cache.

A view above both the catalogue (:mod:`sslbench.data.catalog`, what the datasets are) and the
cache's rules (:mod:`sslbench.data.sides`, where caches live and at what side), so that neither
of those needs the other. The grid's cost table (:mod:`sslbench.grid.cost`) reads
:func:`status` and :func:`cache_estimate` from here too. Nothing here downloads or decodes.
"""

from __future__ import annotations

from ..errors import DownloadError, ExtractError
from .catalog import CATALOG, get_source, locate
from .formats import DatasetInfo
from .sides import default_cache_root, default_side, side_for_pictures, stored_side
from .sources import FashionMNIST, Source

__all__ = ["cache_estimate", "catalog_table", "human_bytes", "status"]


def human_bytes(size: int | None) -> str:
    """1.6 GB, 99.0 MB, 512 B (decimal units, as the archives' sizes are given); ? unknown."""
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    return f"{size} B"


def _on_disk(name: str) -> Source | None:
    """The source of dataset ``name`` if its files are here (nothing is downloaded)."""
    try:
        if name == "folder":
            return None
        if name == "fashion-mnist":
            return FashionMNIST()  # finds the Debian copy or $SSLBENCH_DATA
        folder = locate(name, download=False)
        return None if folder is None else get_source(name, folder, progress=False)
    except (OSError, ValueError, DownloadError, ExtractError):
        return None


def status(name: str, source: Source | None = None) -> str:
    """Whether dataset ``name`` is on disk and which cache sides are built, without
    downloading anything: ``cached 128, 160 px``, ``downloaded``, ``on disk``,
    ``not downloaded``, or ``your folder`` for ``folder`` (its files are wherever
    ``dataset.path`` says)."""
    if name == "folder":
        return "your folder"
    source = source or _on_disk(name)
    if source is None:
        return "not downloaded"  # said in words: a bare "-" read as a missing value
    cache = default_cache_root() / source.cache_key()
    sides = sorted({int(m.parent.name.rsplit("-", 1)[1]) for m in cache.glob("*-*/meta.json")
                    if m.parent.name.rsplit("-", 1)[1].isdigit()})  # fmt: skip
    if sides:
        return "cached " + ", ".join(map(str, sides)) + " px"
    return "downloaded" if name != "fashion-mnist" else "on disk"


def cache_estimate(info: DatasetInfo, source: Source | None = None) -> tuple[int, int] | None:
    """(side S, bytes) of the decode-once caches of every split a run at the dataset's
    default image size builds with the default cache side, N x 3 x S x S bytes in all.

    From the files' own picture sizes and counts when ``source`` (the files) is given, else
    from the catalogue's published counts and typical picture (unknown pictures: the rule's
    2 x image_size); None when the counts are unknown.
    """
    if source is not None:
        side = stored_side(source, default_side(source, info.default_image_size))
        count = sum(source.count(split) for split in source.splits())
    else:
        if info.train is None or info.test is None:
            return None
        side = side_for_pictures(info.typical_size, info.default_image_size)
        # STL-10 caches train, test and train + unlabeled (the pretraining split)
        count = info.train + info.test + (info.train + info.unlabeled if info.unlabeled else 0)
    return side, count * 3 * side * side


def catalog_table() -> list[dict[str, str]]:
    """One row per dataset for ``sslbench datasets list``."""
    rows = []
    for name, info in CATALOG.items():

        def count(n: int | None) -> str:
            return "?" if n is None else f"{n:,}"

        splits = f"{count(info.train)} / {count(info.test)}"
        if info.unlabeled:
            splits += f" + {info.unlabeled:,} unlabeled"
        source = _on_disk(name)
        estimate = cache_estimate(info, source)
        cache = "?" if estimate is None else f"{human_bytes(estimate[1])} at {estimate[0]} px"
        rows.append({
            "name": name,
            "download": human_bytes(info.archive.size or info.approx_bytes) if info.archive
            else ("by hand" if name == "nabirds" else "-"),
            "train / test": splits if info.train is not None else "?",
            "classes": count(info.classes),
            "cache": cache,
            "status": status(name, source),
            "about": info.title,
        })  # fmt: skip
    return rows
