"""The datasets sslbench knows: where each comes from, its size, splits, classes and terms.

``CATALOG`` holds one :class:`DatasetInfo` per dataset name (the ``dataset=`` choices);
:func:`get_source` turns a name into a :class:`~sslbench.data.sources.Source`, fetching and
unpacking its archive first when it is not on disk yet (verified, resumable, see
:mod:`sslbench.data.download`). Data lives under ``$SSLBENCH_DATA`` (default
``~/.cache/sslbench/data``); ``dataset.path=`` points at a folder or archive of your own
copy, ``dataset.url=`` (one dataset) or ``$SSLBENCH_MIRROR`` (all) replace the host.

Sources here:

* :class:`ArchiveFolder`: Imagenette and Imagewoof, ``NAME/{train,val}/<wnid>/*.JPEG``;
* :class:`CIFAR`: CIFAR-10/100 from the authors' python pickles;
* :class:`STL10`: STL-10's binary files, with the 100k unlabeled images for pretraining;
* :class:`NABirds`: a copy the user downloaded after accepting its terms, official split.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ..errors import DownloadError
from .download import Archive, archive_sha256, data_root, fetch_and_extract
from .extract import SUFFIXES, archive_stem, extract, extracted_from
from .folders import exclusive
from .formats import CIFAR, STL10, ArchiveFolder, DatasetInfo, NABirds, nabirds_help
from .sources import (
    FashionMNIST,
    ImageFolder,
    Source,
)

__all__ = ["CATALOG", "get_source", "locate"]

FASTAI = "https://s3.amazonaws.com/fast-ai-imageclas/"
FASTAI_TERMS = (
    "subset of ImageNet packaged by fastai (repository Apache-2.0); the images keep "
    "ImageNet's terms: non-commercial research and education"
)


def _fastai(name: str, size: int | None, train: int | None, test: int | None, classes: int,
            title: str) -> DatasetInfo:  # fmt: skip
    short = {"160": 160, "320": 320}.get(name.rsplit("-", 1)[-1])
    return DatasetInfo(
        name=name,
        title=title,
        train=train,
        test=test,
        classes=classes,
        archive=Archive(name, f"{FASTAI}{name}.tgz", f"{name}.tgz", size=size),
        terms=FASTAI_TERMS,
        homepage="https://github.com/fastai/imagenette",
        # the lightly benchmark trains imagenette2-160 at 128 px; the full sizes at 224
        default_image_size=128 if short == 160 else 224,
        # the -160 / -320 copies keep the aspect ratio at that shortest side; the full size
        # pictures are ImageNet's, typically 500 x 375
        typical_size=(round(short * 4 / 3), short) if short else (500, 375),
    )


def _cifar(classes: int, md5: str, marker: str, approx_bytes: int) -> DatasetInfo:
    """CIFAR-10 or -100, python version; md5 as published (and pinned by torchvision)."""
    name = f"cifar{classes}"
    filename = f"cifar-{classes}-python.tar.gz"
    return DatasetInfo(
        name, f"CIFAR-{classes}: 32x32 colour, {classes} classes", 50_000, 10_000, classes,
        Archive(name, f"https://www.cs.toronto.edu/~kriz/{filename}", filename, md5=md5),
        terms="free for research (Krizhevsky 2009); no licence stated",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html", default_image_size=32,
        marker=marker, approx_bytes=approx_bytes, typical_size=(32, 32),
    )  # fmt: skip


_V2 = {  # DESIGN.md §5: bytes, train / val
    "imagenette2": 1_557_161_267, "imagenette2-320": 341_663_724, "imagenette2-160": 99_003_388,
    "imagewoof2": 1_343_482_285, "imagewoof2-320": 328_288_506, "imagewoof2-160": 92_560_471,
}  # fmt: skip

CATALOG: dict[str, DatasetInfo] = {}
for _family, _counts, _what in (
    ("imagenette", (9_469, 3_925), "10 easy ImageNet classes"),
    ("imagewoof", (9_025, 3_929), "10 ImageNet dog breeds"),
):
    for _suffix, _label in (("", "full size"), ("-320", "shortest side 320"),
                            ("-160", "shortest side 160")):  # fmt: skip
        _v2 = f"{_family}2{_suffix}"
        CATALOG[_v2] = _fastai(_v2, _V2[_v2], *_counts, 10, f"{_what}, v2 split, {_label}")
        _v1 = f"{_family}{_suffix}"
        # v1 (2019, ~96/4 train/val split): sizes and counts are recorded at first download
        CATALOG[_v1] = _fastai(_v1, None, None, None, 10, f"{_what}, v1 split, {_label}")

CATALOG.update({
    "nabirds": DatasetInfo(
        "nabirds", "North American birds, 555 visual categories, official split",
        train=23_929, test=24_633, classes=555, archive=None,
        terms="Cornell Lab of Ornithology: non-commercial research and education; accept the "
        "terms at https://dl.allaboutbirds.org/nabirds and download by hand",
        homepage="https://dl.allaboutbirds.org/nabirds", marker="images.txt",
    ),
    "cifar10": _cifar(10, "c58f30108f718f92721af3b95e74349a", "batches.meta", 170_000_000),
    "cifar100": _cifar(100, "eb9058c3a382ffc7106e4002c42a8d85", "meta", 169_000_000),
    "stl10": DatasetInfo(
        "stl10", "STL-10: 96x96 colour, 10 classes, pretrains on 100k unlabeled + 5k train",
        5_000, 8_000, 10,
        Archive("stl10", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                "stl10_binary.tar.gz", md5="91f7769df0f17e558f3565bffb0c7dfb"),
        terms="images from ImageNet (Coates et al. 2011): non-commercial research",
        homepage="https://cs.stanford.edu/~acoates/stl10/", default_image_size=96,
        unlabeled=100_000, marker="train_X.bin", approx_bytes=2_640_000_000,
        typical_size=(96, 96),
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "Fashion-MNIST: 28x28 greyscale, 10 classes", 60_000, 10_000, 10,
        archive=None, terms="MIT licence (Zalando Research)",
        homepage="https://github.com/zalandoresearch/fashion-mnist", default_image_size=32,
        typical_size=(28, 28),
    ),
    "folder": DatasetInfo(
        "folder", "your own images: dataset.path=DIR (DIR/class/*.jpg, or a flat folder)",
        None, None, None, archive=None, terms="yours", homepage="",
    ),
})  # fmt: skip


def _dataset_dir(folder: Path, info: DatasetInfo) -> Path | None:
    """The folder that holds the dataset's files inside ``folder``: itself or a subfolder
    up to two levels down (archives nest differently) that contains ``info.marker``."""
    if not folder.is_dir():
        return None
    level = [folder]
    for _ in range(3):
        for candidate in level:
            if (candidate / info.marker).exists():
                return candidate
        level = [d for parent in level for d in sorted(parent.iterdir())
                 if d.is_dir() and not d.name.startswith(".")]  # fmt: skip
    return None


def _homes(info: DatasetInfo) -> list[Path]:
    """Where a dataset's files may be under ``$SSLBENCH_DATA``: its name, and the folder its
    archive unpacks to (``cifar-10-python`` for ``cifar10``)."""
    homes = [data_root() / info.name]
    if info.archive is not None:
        stem = info.archive.filename.split(".")[0]
        homes.append(data_root() / stem)
    return homes


def _archive_put_in(home: Path) -> Path | None:
    """The one archive a user put in a dataset's home folder, if there is exactly one."""
    if not home.is_dir():
        return None
    found = [f for f in home.iterdir() if f.is_file() and f.name.lower().endswith(SUFFIXES)]
    return found[0] if len(found) == 1 else None


def _unpack_users_archive(
    given: Path, home: Path, info: DatasetInfo, download: bool, progress: bool
) -> Path | None:
    """The dataset folder inside a user's archive, unpacked beside whatever is in ``home``
    into a folder named by the archive's SHA-256: the archive itself is never touched, and
    a second, different archive gets its own folder instead of being ignored."""
    if not download:  # nothing is read or written: only a copy unpacked before counts
        copies = sorted(home.glob(f"{glob.escape(archive_stem(given.name))}-*"))
        return next((d for c in copies if (d := _dataset_dir(c, info))), None)
    sha256 = archive_sha256(given, home, progress=progress)
    dest = home / f"{archive_stem(given.name)}-{sha256[:12]}"
    with exclusive(dest, f"another process unpacking {given.name}", progress):
        if (extracted_from(dest) or {}).get("sha256") != sha256:
            extract(given, dest, progress=progress, sha256=sha256)
    unpacked = _dataset_dir(dest, info)
    if unpacked is None:
        raise FileNotFoundError(f"{info.name}: {given} holds no {info.marker}")
    return unpacked


def locate(
    name: str,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Path | None:
    """The folder of dataset ``name``'s files, fetching and unpacking them if needed.

    ``path`` may be the dataset's folder or an archive of it (unpacked under
    ``$SSLBENCH_DATA/NAME``). Without ``path``, ``$SSLBENCH_DATA/NAME`` is used, downloaded
    from the catalogue's URL (or ``url``, or ``$SSLBENCH_MIRROR``) when ``download`` allows.
    Returns None when the data is not on disk and ``download`` is False.
    """
    info = CATALOG[name]
    home = data_root() / name
    on_disk = next((d for h in _homes(info) if (d := _dataset_dir(h, info))), None)
    if path is None and on_disk is None:
        path = _archive_put_in(home)  # NABirds' help: "put nabirds.tar.gz at HOME"
    if path is not None:
        given = Path(path).expanduser()
        if given.is_file():  # an archive the user downloaded (NABirds, or offline copies)
            return _unpack_users_archive(given, home, info, download, progress)
        if given.is_dir():
            found = _dataset_dir(given, info)
            if found is None:
                raise FileNotFoundError(f"{name}: no {info.marker} in {given} or below")
            return found
        raise FileNotFoundError(f"{name}: dataset.path={given} does not exist")
    if on_disk is not None or not download:
        return on_disk
    if info.archive is None:
        if name == "nabirds":
            raise FileNotFoundError(nabirds_help(CATALOG["nabirds"].homepage, home))
        raise FileNotFoundError(f"{name}: no files at {home} and nothing to download")
    # The runs of a grid may all start on a dataset that is not here yet: one downloads and
    # unpacks it, the others wait and then find it (fetch_and_extract is then a no-op).
    with exclusive(home, f"another process fetching {name}", progress):
        extracted = fetch_and_extract(info.archive, data_root(), url=url, progress=progress)
    found = _dataset_dir(extracted, info)
    if found is None:
        raise DownloadError(f"{info.archive.filename} unpacked without {info.marker}")
    return found


def get_source(
    name: str,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    *,
    progress: bool = True,
) -> Source:
    """The source of dataset ``name`` (see ``CATALOG``), fetched first if needed."""
    if name not in CATALOG:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(CATALOG))}")
    if name == "folder":
        if path is None:
            raise ValueError("the 'folder' dataset needs dataset.path=DIR")
        return ImageFolder(path)
    if name == "fashion-mnist":  # its own lookup: $SSLBENCH_DATA, Debian's copy, torchvision
        return FashionMNIST(path) if path is not None else FashionMNIST()
    info = CATALOG[name]
    folder = locate(name, path, url, progress=progress)
    assert folder is not None  # download=True: found, fetched, or an error was raised
    if name in ("cifar10", "cifar100"):
        return CIFAR(info, folder)
    if name == "stl10":
        return STL10(info, folder)
    if name == "nabirds":
        return NABirds(info, folder)
    return ArchiveFolder(info, folder)
