"""Image sources: where the pixels of a dataset come from, one image at a time.

A :class:`Source` knows a dataset's splits, classes and content fingerprint, and can iterate
over the decoded images of a split without holding them all in memory; sources of separate files
also list a split's items and decode any one of them (:meth:`Source.items`,
:meth:`Source.decode`), so that the cache builder can decode them in parallel. Sources are only
read when the decode-once cache (:mod:`sslbench.data.cache`) is (re)built; training reads the
cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "FashionMNIST",
    "ImageFolder",
    "Source",
    "read_idx",
]

#: Called with (file name, exception) when a source cannot decode an image; it either raises
#: (strict mode) or records the file and returns, in which case the image is skipped.
ErrorHandler = Callable[[str, Exception], None]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

#: Pictures whose header :meth:`Source.typical_size` reads (about a second on a cold disk).
SIZE_SAMPLE = 256

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ format).
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or raw, detected from its content) into a native-endian array.

    The header is two zero bytes, a type byte, the number of dims D, then D big-endian uint32
    sizes; the data follows in C order. Raises ``ValueError`` naming the file when the magic
    number is bad or the file is truncated.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            data = gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip IDX file ({e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'none'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header < count * dtype.itemsize:
        raise ValueError(
            f"{path}: truncated IDX file (shape {shape} needs {count * dtype.itemsize} bytes, "
            f"has {len(data) - header})"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file fully into an RGB or L (greyscale) PIL image.

    We own the file handle, so it is closed even for multi-frame formats; ``load()`` decodes
    here, so a broken file fails in this call rather than later.
    """
    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()
    return as_8bit(image)


def as_8bit(image: Image.Image) -> Image.Image:
    """``image`` as RGB or L with 8 bits a channel. 16-bit greyscale (PNG, TIFF: modes
    ``I;16*`` and ``I``) is scaled to 0-255 (Pillow's own conversion clips it, so almost
    every pixel of such a picture turned white); anything else goes through Pillow's RGB."""
    if image.mode in ("RGB", "L"):
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and values.max(initial=0) <= 255:
            scale = 1.0  # 32-bit integers that hold 8-bit values
        else:
            scale = 255.0 / 65535.0
        pixels = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels, mode="L")
    return image.convert("RGB")


def header_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without decoding the pixels."""
    with Image.open(path) as image:
        return image.size


def _sha256_files(paths: list[Path]) -> str:
    """Content hash of files, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


class Source(ABC):
    """A dataset as seen by the cache builder.

    Attributes:
        name: registry name, e.g. ``"fashion-mnist"``; also the cache's top-level directory.
        classes: class names indexed by label id; empty for unlabeled data.
        path: where the source's files are (recorded in cache metadata).
    """

    name: str
    classes: list[str]
    path: Path

    #: How the source decodes: True when each item of :meth:`items` is the path of an image
    #: file (JPEG, PNG, ...) that :meth:`decode` opens with :func:`open_image` and nothing
    #: more, so the cache builder may open the files itself, JPEGs as drafts at a reduced
    #: scale (``dataset.jpeg_draft``; :meth:`allows_jpeg_draft`). False: the source alone
    #: knows how to decode its items (arrays, or a decode that does more).
    decodes_image_files: ClassVar[bool] = False

    @abstractmethod
    def splits(self) -> list[str]:
        """Names of the available splits, e.g. ``["train", "test"]``."""

    @abstractmethod
    def count(self, split: str) -> int:
        """Number of images in ``split`` (an upper bound if some files turn out unreadable)."""

    @abstractmethod
    def fingerprint(self, split: str) -> str:
        """sha256 hex digest identifying the split's content; the cache rebuilds when it changes."""

    def iter_images(
        self, split: str, on_error: ErrorHandler | None = None
    ) -> Iterator[tuple[np.ndarray | Image.Image, int]]:
        """Yield ``(image, label)`` one at a time; label is -1 for unlabeled data.

        Images are HxWx3 uint8 RGB or HxW greyscale arrays, or decoded RGB/L PIL images.
        Unreadable files are passed to ``on_error`` (and skipped if it returns); without a
        handler the decoding error propagates. The default decodes :meth:`items` one by one;
        sources without items (arrays in a few files) override it.
        """
        items = self.items(split)
        if items is None:
            raise NotImplementedError(f"{type(self).__name__} has neither items nor iter_images")
        for item, label in items:
            try:
                image = self.decode(item)
            except Exception as err:  # PIL raises many types for corrupt files
                if on_error is None:
                    raise
                on_error(item, err)
                continue
            yield image, label

    def natural_size(self) -> int | None:
        """Side of the images if they are all square of one size (28 for Fashion-MNIST)."""
        return None

    def typical_size(self) -> tuple[int, int] | None:
        """(long, short) side in pixels of the source's typical picture, which sets the
        default cache side (:func:`sslbench.data.sides.default_side`); None when unknown.

        Square sources of one size give their side twice. Sources that list their items
        read the headers (not the pixels) of up to ``SIZE_SAMPLE`` of them, evenly spaced
        over the pretraining split: long is the 90th percentile of the long sides (9 in 10
        pictures keep every pixel along both axes in a square of that side), short the
        median short side. Measured once per source object.
        """
        if "_typical_size" not in self.__dict__:
            self._typical_size = self._measure_typical_size()
        return self._typical_size

    def _measure_typical_size(self) -> tuple[int, int] | None:
        natural = self.natural_size()
        if natural is not None:
            return natural, natural
        split = self.pretrain_split()
        items = self.items(split) if split in self.splits() else None
        if not items:
            return None
        step = max(1, -(-len(items) // SIZE_SAMPLE))
        sizes = []
        for item, _ in items[::step]:
            try:
                sizes.append(self.picture_size(item))
            except Exception:  # unreadable files are the cache builder's to report
                continue
        if not sizes:
            return None
        longs = [max(w, h) for w, h in sizes]
        shorts = [min(w, h) for w, h in sizes]
        return int(np.ceil(np.percentile(longs, 90))), int(np.median(shorts))

    def picture_size(self, item: str) -> tuple[int, int]:
        """(width, height) of one item of :meth:`items`, from its header where the format
        allows; the default decodes it."""
        image = self.decode(item)
        if isinstance(image, np.ndarray):
            return int(image.shape[1]), int(image.shape[0])
        return image.size

    def pretrain_split(self) -> str:
        """The split a method pretrains on: ``train``, or a larger unlabeled split where the
        dataset has one (STL-10's 100k). The linear probe always trains on ``train``."""
        return "train"

    def max_side(self) -> int | None:
        """Largest side worth storing in the cache, which never upsamples beyond it.

        None: no limit (the requested size is stored). Default :meth:`natural_size`: a
        source of 28-px squares is cached at 28 whatever the size asked for.
        """
        return self.natural_size()

    def items(self, split: str) -> list[tuple[str, int]] | None:
        """The split's ``(item, label)`` pairs in cache order, for random-access decoding.

        A source whose images can be decoded one by one (files, say) returns them here and
        implements :meth:`decode`; the cache builder then decodes large splits in several
        processes. They must be the images :meth:`iter_images` yields, in the same order, so
        parallel and sequential builds give the same cache. Items travel to worker processes,
        so keep them small (paths, not pixels). Default None: the split is read sequentially
        with :meth:`iter_images`.
        """
        return None

    def decode(self, item: str) -> np.ndarray | Image.Image:
        """Decode one item of :meth:`items` (image types as in :meth:`iter_images`).

        Raises on unreadable input; the builder skips the item (or fails in strict mode),
        naming ``item``. The source is pickled to worker processes where ``fork`` is not used.
        """
        raise NotImplementedError(f"{type(self).__name__} has no random access (items() is None)")

    def allows_jpeg_draft(self) -> bool:
        """Whether the cache builder may open this source's items itself, JPEGs as drafts.

        The class that sets :attr:`decodes_image_files` vouches for its own :meth:`decode`;
        a subclass below it that replaces :meth:`decode`, or any class that replaces
        :meth:`iter_images`, decodes in a way that class did not vouch for, so its items are
        never drafted (and its cache keeps the fingerprint of a full decode).
        """
        mro = type(self).__mro__
        declaring = next(k for k in mro if "decodes_image_files" in vars(k))
        if not declaring.decodes_image_files or type(self).iter_images is not Source.iter_images:
            return False
        return not any("decode" in vars(k) for k in mro[: mro.index(declaring)])

    def cache_key(self) -> str:
        """Relative cache directory of this source (unique per source content location)."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r})"


def _env_dir(var: str, default: str) -> Path:
    return Path(os.environ.get(var) or default).expanduser()


class FashionMNIST(Source):
    """Zalando's Fashion-MNIST: 28x28 greyscale, 60k train / 10k test, 10 classes.

    Files are looked up in ``$SSLBENCH_DATA/fashion-mnist``, then the Debian package's
    ``/usr/share/datasets/fashion-mnist``, then downloaded with torchvision into
    ``$SSLBENCH_DATA`` (default ``~/.cache/sslbench/data``). An explicit ``path`` disables the
    search. Both ``*.gz`` and uncompressed IDX files are accepted.
    """

    name = "fashion-mnist"
    CLASSES = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]  # fmt: skip
    SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
    _FILES = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.classes = list(self.CLASSES)
        if path is not None:
            self.path = Path(path).expanduser()
            self._files = self._find_files(self.path)
            if self._files is None:
                raise FileNotFoundError(f"Fashion-MNIST IDX files not found in {self.path}")
        else:
            self.path, self._files = self._locate()

    @classmethod
    def _find_files(cls, folder: Path) -> dict[str, tuple[Path, Path]] | None:
        """Map split -> (images, labels) files in ``folder``, or None if any is missing."""
        found: dict[str, tuple[Path, Path]] = {}
        for split, stems in cls._FILES.items():
            pair = []
            for stem in stems:
                hits = [folder / (stem + ext) for ext in (".gz", "")]
                hits = [p for p in hits if p.is_file()]
                if not hits:
                    return None
                pair.append(hits[0])
            found[split] = (pair[0], pair[1])
        return found

    def _locate(self) -> tuple[Path, dict[str, tuple[Path, Path]]]:
        data_root = _env_dir("SSLBENCH_DATA", "~/.cache/sslbench/data")
        downloaded = data_root / "FashionMNIST" / "raw"  # torchvision's layout under its root
        for folder in (data_root / "fashion-mnist", self.SYSTEM_DIR, downloaded):
            files = self._find_files(folder)
            if files is not None:
                return folder, files
        try:
            from torchvision.datasets import FashionMNIST as TVFashionMNIST

            TVFashionMNIST(root=str(data_root), download=True)
            files = self._find_files(downloaded)
            if files is None:
                raise RuntimeError(f"download left no IDX files in {downloaded}")
            return downloaded, files
        except Exception as e:  # any failure: report all places we tried, on one line
            reason = " ".join(str(e).split()) or type(e).__name__
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {data_root / 'fashion-mnist'} or {self.SYSTEM_DIR}, "
                f"and downloading into {data_root} failed: {reason}"
            ) from None

    def _split_files(self, split: str) -> tuple[Path, Path]:
        if split not in self._files:
            raise ValueError(f"fashion-mnist has no split {split!r}; valid: {self.splits()}")
        return self._files[split]

    def splits(self) -> list[str]:
        return list(self._FILES)

    def count(self, split: str) -> int:
        # The first size in the labels file's header; reads a few bytes, not the file.
        label_file = self._split_files(split)[1]
        with open(label_file, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            header = (gzip.GzipFile(fileobj=raw) if gzipped else raw).read(8)
        if len(header) < 8 or header[:2] != b"\0\0":
            raise ValueError(f"{label_file}: not an IDX file")
        return struct.unpack(">I", header[4:])[0]

    def natural_size(self) -> int | None:
        return 28

    def fingerprint(self, split: str) -> str:
        return _sha256_files(list(self._split_files(split)))

    def iter_images(
        self, split: str, on_error: ErrorHandler | None = None
    ) -> Iterator[tuple[np.ndarray | Image.Image, int]]:
        # The whole split is ~47 MB of raw pixels, so reading it at once is fine.
        image_file, label_file = self._split_files(split)
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"{image_file}: shape {images.shape} vs {len(labels)} labels")
        for image, label in zip(images, labels, strict=True):
            yield image, int(label)


class ImageFolder(Source):
    """Images in a directory tree.

    Layouts: ``root/<class>/**/*.jpg`` (labeled; classes are the sorted subdirectory names) or
    a flat ``root/*.jpg`` (unlabeled, label -1, for pretraining; loose images beside class
    folders are ignored). Hidden files are ignored. If ``root`` has ``train/`` and
    ``val/`` or ``test/`` subdirectories, those are the splits and ``test`` means whichever of
    them exists (``test/`` if both do); otherwise the whole folder is the ``train`` split.

    The fingerprint hashes sorted (relative path, size, mtime_ns) of the split's files, not the
    file contents: content-hashing a large dataset on every run would take minutes, and edits
    through ordinary tools change the size or mtime.
    """

    name = "folder"
    decodes_image_files = True  # decode is open_image: JPEGs may be drafted

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.path}")
        sub = {d: self.path / d for d in ("train", "val", "test") if (self.path / d).is_dir()}
        if "train" in sub and ("val" in sub or "test" in sub):
            self._dirs = {"train": sub["train"], "test": sub.get("test", sub.get("val"))}
            if "val" in sub and "test" in sub:
                self._dirs["val"] = sub["val"]
        else:
            self._dirs = {"train": self.path}
        # Class ids must agree across splits, so they come from the union of all splits.
        names = {d.name for root in self._dirs.values() for d in self._class_dirs(root)}
        self.classes = sorted(names)

    @staticmethod
    def _is_image(p: Path) -> bool:
        return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")

    def _class_dirs(self, root: Path) -> list[Path]:
        """Subdirectories of ``root`` that contain images at any depth (the classes)."""
        dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        return [d for d in dirs if any(self._is_image(p) and p.is_file() for p in d.rglob("*"))]

    def _dir(self, split: str) -> Path:
        if split == "val" and "val" not in self._dirs and "test" in self._dirs:
            split = "test"  # a lone val/ folder is the test split
        if split not in self._dirs:
            raise ValueError(
                f"{self.path} has no {split!r} split (splits: {self.splits()}; add train/ and "
                f"val/ subfolders to get a test split)"
            )
        return self._dirs[split]

    def files(self, split: str) -> list[tuple[Path, int]]:
        """Sorted ``(file, label)`` pairs of a split (label -1 for a flat folder)."""
        root = self._dir(split)
        class_dirs = self._class_dirs(root)
        if not class_dirs:
            files = sorted(p for p in root.iterdir() if p.is_file() and self._is_image(p))
            out = [(p, -1) for p in files]
        else:
            ids = {c: i for i, c in enumerate(self.classes)}
            out = []
            for d in sorted(class_dirs):
                files = sorted(p for p in d.rglob("*") if p.is_file() and self._is_image(p))
                out += [(p, ids[d.name]) for p in files]
        if not out:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
        return out

    def splits(self) -> list[str]:
        return list(self._dirs)

    def count(self, split: str) -> int:
        return len(self.files(split))

    def fingerprint(self, split: str) -> str:
        h = hashlib.sha256()
        for p, label in self.files(split):
            st = p.stat()
            h.update(f"{p.relative_to(self.path).as_posix()}\0{label}\0{st.st_size}\0".encode())
            h.update(f"{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def cache_key(self) -> str:
        # Two folders with the same base name must not share a cache directory.
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:10]
        return f"{self.name}/{self.path.name or 'root'}-{digest}"

    def items(self, split: str) -> list[tuple[str, int]]:
        """:meth:`files` as ``(path string, label)`` pairs."""
        return [(str(p), label) for p, label in self.files(split)]

    def decode(self, item: str) -> Image.Image:
        return open_image(item)

    def picture_size(self, item: str) -> tuple[int, int]:
        return header_size(item)
