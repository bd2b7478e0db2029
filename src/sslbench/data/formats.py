"""A catalogued dataset (:class:`DatasetInfo`: what ``datasets list`` says of it and where
its files come from) and the sources of the datasets that come in a format of their own:
Imagenette / Imagewoof folders, CIFAR's pickled batches, STL-10's binaries, NABirds'
annotation files. :mod:`sslbench.data.catalog` lists them and finds their files.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .download import Archive
from .sources import (
    ErrorHandler,
    ImageFolder,
    Source,
    _sha256_files,
    header_size,
    open_image,
)

__all__ = ["CIFAR", "STL10", "ArchiveFolder", "DatasetInfo", "NABirds", "nabirds_help"]


@dataclass(frozen=True)
class DatasetInfo:
    """What ``sslbench datasets list`` says about a dataset, and where its files come from.

    Counts are of the published splits (None where they are only known once downloaded);
    ``archive`` is None for data that cannot be downloaded by sslbench (NABirds' terms must
    be accepted by hand) or that comes another way (Fashion-MNIST, your own folder).
    """

    name: str
    title: str
    train: int | None
    test: int | None
    classes: int | None
    archive: Archive | None
    terms: str
    homepage: str
    default_image_size: int = 224
    # (long, short) side of a typical picture, for the cache size `datasets list` states before
    # the files are here (then the files' own sizes count): ImageNet's are mostly 4:3
    typical_size: tuple[int, int] | None = None
    unlabeled: int | None = None  # extra pretraining images (STL-10)
    marker: str = "train"  # a file or folder that the dataset's own folder contains
    approx_bytes: int | None = None  # download size to show when the archive pins none


def nabirds_help(homepage: str, where: Path) -> str:
    """How to get NABirds, whose terms must be accepted by hand, and where to put it."""
    return (
        f"NABirds must be downloaded by hand after accepting its terms at "
        f"{homepage}: put nabirds.tar.gz (or its extracted nabirds/ folder) "
        f"at {where} or pass dataset.path=FILE_OR_FOLDER"
    )


class ArchiveFolder(ImageFolder):
    """Imagenette / Imagewoof: ``NAME/{train,val}/<wnid>/*.JPEG``; ``val`` is the test split
    and class ids are the sorted WordNet ids (the same for every size of a family)."""

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        super().__init__(folder)
        self.name = info.name
        self.info = info


class CIFAR(Source):
    """CIFAR-10 / CIFAR-100 from the authors' python version (pickled numpy batches).

    The pickles are read only from the verified archive's folder or a folder you chose."""

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        self.name, self.info, self.path = info.name, info, folder
        fine = info.name == "cifar100"
        self._files = {
            "train": ["train"] if fine else [f"data_batch_{i}" for i in range(1, 6)],
            "test": ["test"] if fine else ["test_batch"],
        }
        self._label_key = "fine_labels" if fine else "labels"
        meta = self._unpickle(folder / ("meta" if fine else "batches.meta"))
        self.classes = list(meta["fine_label_names" if fine else "label_names"])

    @staticmethod
    def _unpickle(file: Path) -> dict:
        if not file.is_file():
            raise FileNotFoundError(f"CIFAR file missing: {file}")
        with open(file, "rb") as handle:
            return pickle.load(handle, encoding="latin1")

    def splits(self) -> list[str]:
        return ["train", "test"]

    def _batches(self, split: str) -> list[Path]:
        if split not in self._files:
            raise ValueError(f"{self.name} has no split {split!r}; valid: train, test")
        return [self.path / f for f in self._files[split]]

    def count(self, split: str) -> int:
        return {"train": 50_000, "test": 10_000}[split] if split in self._files else 0

    def natural_size(self) -> int | None:
        return 32

    def fingerprint(self, split: str) -> str:
        return _sha256_files(self._batches(split))

    def iter_images(
        self, split: str, on_error: ErrorHandler | None = None
    ) -> Iterator[tuple[np.ndarray | Image.Image, int]]:
        for batch in self._batches(split):
            content = self._unpickle(batch)
            images = np.asarray(content["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            for image, label in zip(images, content[self._label_key], strict=True):
                yield image.transpose(1, 2, 0), int(label)


class STL10(Source):
    """STL-10's binary version: ``train`` (5k labeled), ``test`` (8k), ``unlabeled`` (100k).

    Methods pretrain on ``train+unlabeled`` (105k images, the usual protocol: Coates et al.'s
    unsupervised features and the SSL papers that report STL-10 use both); the probe trains
    on ``train`` and is scored on ``test``. ``splits()`` lists ``train``, ``test`` and
    ``train+unlabeled``, the splits a run caches, so the 100k unlabeled images are cached once;
    ``unlabeled`` alone can still be read. Images are stored column-major (3, 96, 96).
    """

    _FILES = {
        "train": ("train_X.bin", "train_y.bin"),
        "test": ("test_X.bin", "test_y.bin"),
        "unlabeled": ("unlabeled_X.bin", None),
    }
    PRETRAIN = "train+unlabeled"
    _PIXELS = 3 * 96 * 96

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        self.name, self.info, self.path = info.name, info, folder
        names = folder / "class_names.txt"
        self.classes = names.read_text().split() if names.is_file() else [str(i) for i in range(10)]

    def _present(self) -> list[str]:
        return [s for s, (x, _) in self._FILES.items() if (self.path / x).is_file()]

    def splits(self) -> list[str]:
        present = self._present()
        listed = [s for s in ("train", "test") if s in present]
        if "unlabeled" in present and "train" in present:
            listed.append(self.PRETRAIN)
        return listed

    def pretrain_split(self) -> str:
        return self.PRETRAIN if self.PRETRAIN in self.splits() else "train"

    def _parts(self, split: str) -> list[tuple[Path, Path | None]]:
        """The (images, labels) files of a split, in order (``train+unlabeled``: both)."""
        names = ["train", "unlabeled"] if split == self.PRETRAIN else [split]
        valid = [*self._present(), *([self.PRETRAIN] if self.PRETRAIN in self.splits() else [])]
        if split not in valid:
            raise ValueError(f"stl10 has no split {split!r}; valid: {', '.join(valid)}")
        pairs = []
        for name in names:
            images, labels = self._FILES[name]
            pairs.append((self.path / images, None if labels is None else self.path / labels))
        return pairs

    def count(self, split: str) -> int:
        return sum(images.stat().st_size // self._PIXELS for images, _ in self._parts(split))

    def natural_size(self) -> int | None:
        return 96

    def fingerprint(self, split: str) -> str:
        # Size and mtime, not content: hashing the 2.6 GB unlabeled file on every run costs
        # seconds; the archive itself was verified when downloaded.
        parts = [p for pair in self._parts(split) for p in pair if p is not None]
        stats = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in parts]
        return ";".join(stats)

    def iter_images(
        self, split: str, on_error: ErrorHandler | None = None
    ) -> Iterator[tuple[np.ndarray | Image.Image, int]]:
        for images_file, labels_file in self._parts(split):
            n = images_file.stat().st_size // self._PIXELS
            labels = (
                np.fromfile(labels_file, dtype=np.uint8).astype(np.int64) - 1  # stored 1..10
                if labels_file is not None
                else np.full(n, -1, dtype=np.int64)
            )
            pixels = np.memmap(images_file, dtype=np.uint8, mode="r", shape=(n, 3, 96, 96))
            for i in range(n):
                yield pixels[i].transpose(2, 1, 0), int(labels[i])  # column-major -> H, W, C


class NABirds(Source):
    """NABirds (Van Horn et al. 2015): ``images/<class>/<file>.jpg`` listed in ``images.txt``,
    labels in ``image_class_labels.txt``, the official split in ``train_test_split.txt``
    (1 = train), names in ``classes.txt``. The 555 classes are the categories that have
    images (the hierarchy's leaves); ids are their sorted class numbers."""

    decodes_image_files = True  # decode is open_image: JPEGs may be drafted

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        self.name, self.info, self.path = info.name, info, folder
        images = self._table("images.txt")
        labels = self._table("image_class_labels.txt")
        is_train = self._table("train_test_split.txt")
        names = {}
        for line in (folder / "classes.txt").read_text().splitlines():
            number, _, title = line.strip().partition(" ")
            if number:
                names[number] = title
        used = sorted({labels[i] for i in images}, key=int)
        ids = {c: k for k, c in enumerate(used)}
        self.classes = [names.get(c, c) for c in used]
        self._items: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
        for image_id, relative in images.items():
            split = "train" if is_train.get(image_id) == "1" else "test"
            self._items[split].append((str(folder / "images" / relative), ids[labels[image_id]]))

    def _table(self, file: str) -> dict[str, str]:
        path = self.path / file
        if not path.is_file():
            raise FileNotFoundError(
                f"NABirds file missing: {path}; {nabirds_help(self.info.homepage, self.path)}"
            )
        table = {}
        for line in path.read_text().splitlines():
            key, _, value = line.strip().partition(" ")
            if key:
                table[key] = value.strip()
        return table

    def splits(self) -> list[str]:
        return ["train", "test"]

    def items(self, split: str) -> list[tuple[str, int]]:
        if split not in self._items:
            raise ValueError(f"nabirds has no split {split!r}; valid: train, test")
        return self._items[split]

    def decode(self, item: str) -> Image.Image:
        return open_image(item)

    def picture_size(self, item: str) -> tuple[int, int]:
        return header_size(item)

    def count(self, split: str) -> int:
        return len(self.items(split))

    def fingerprint(self, split: str) -> str:
        # The split's file list and the annotation files' content (small text files).
        meta = [self.path / f for f in ("images.txt", "image_class_labels.txt",
                                        "train_test_split.txt")]  # fmt: skip
        return f"{_sha256_files(meta)}:{split}:{len(self.items(split))}"
