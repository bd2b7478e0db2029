"""JPEG draft in the cache builder: large JPEGs are decoded at 1/2..1/8 scale, never below the
cache side, with the original size kept; the cache key tells drafted and full decodes apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

import sslbench.data.cache_decode as cache_decode
from sslbench.data import ImageFolder, load_or_build
from sslbench.data.catalog import CATALOG
from sslbench.data.formats import CIFAR, STL10, ArchiveFolder, NABirds
from sslbench.data.sources import FashionMNIST, Source, open_image

SIDE = 64


def smooth_picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random RGB picture (coarse noise upsampled), like a photo's low frequencies."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def make_folder(root: Path, sizes: list[tuple[int, int]], suffix: str = ".jpg") -> ImageFolder:
    """One picture per size, two classes, saved as JPEG (quality 90) or PNG by ``suffix``."""
    for i, (w, h) in enumerate(sizes):
        path = root / f"c{i % 2}" / f"{i:02d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        smooth_picture(w, h, i).save(path, **({"quality": 90} if suffix == ".jpg" else {}))
    return ImageFolder(root)


@pytest.fixture
def draft_log(tmp_path, monkeypatch) -> Path:
    """Every JpegImageFile.draft call appends "requested_w requested_h w_after h_after" to the
    returned file (a file, so calls in forked workers are seen too)."""
    log = tmp_path / "drafts.txt"
    plain = JpegImageFile.draft

    def spy(self, mode, size):
        result = plain(self, mode, size)
        with open(log, "a") as f:
            f.write(f"{size[0]} {size[1]} {self.size[0]} {self.size[1]}\n")
        return result

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    return log


def draft_calls(log: Path) -> list[list[int]]:
    return (
        [list(map(int, line.split())) for line in log.read_text().splitlines()]
        if log.exists()
        else []
    )


def build(source, cache_root: Path, draft: bool, workers: int = 1):
    return load_or_build(
        source, "train", SIDE, cache_root, progress=False, workers=workers, jpeg_draft=draft
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_large_jpegs_are_drafted_close_to_a_full_decode(tmp_path, monkeypatch, draft_log, workers):
    monkeypatch.setattr(cache_decode, "PARALLEL_MIN_ITEMS", 0)  # workers=2: the parallel path
    sizes = [(1000, 750), (750, 1000), (1000, 750), (640, 480)]
    source = make_folder(tmp_path / "ds", sizes)

    full = build(source, tmp_path / "full", draft=False, workers=workers)
    assert draft_calls(draft_log) == []  # off: never drafted
    drafted = build(source, tmp_path / "draft", draft=True, workers=workers)

    calls = draft_calls(draft_log)
    assert len(calls) == len(sizes)  # once per JPEG, in this process or in the workers
    assert all(req == [SIDE, SIDE] for *req, _, _ in calls)
    after = sorted(tuple(c[2:]) for c in calls)
    # 1000 x 750 at 1/8 (125 x 94), 640 x 480 at 1/4 (160 x 120): smaller, never below S.
    assert after == sorted([(125, 94), (94, 125), (125, 94), (160, 120)])
    assert all(min(c[2:]) >= SIDE for c in calls)

    # The original sizes (aspect), not the drafted ones, and pixels close to a full decode.
    expected = [list(sizes[int(path.stem)]) for path, _ in source.files("train")]
    assert drafted.sizes.tolist() == full.sizes.tolist() == expected
    assert np.array_equal(drafted.aspect, full.aspect)
    difference = np.abs(drafted.images.astype(np.int16) - full.images.astype(np.int16))
    assert 0 < difference.mean() < 3.0
    assert drafted.meta["jpeg_draft"] is True and full.meta["jpeg_draft"] is False


def test_sequential_and_parallel_drafts_are_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_decode, "PARALLEL_MIN_ITEMS", 0)
    source = make_folder(tmp_path / "ds", [(1000, 750), (300, 140), (90, 80), (500, 500)])
    seq = build(source, tmp_path / "seq", draft=True, workers=1)
    par = build(source, tmp_path / "par", draft=True, workers=2)
    for name in ("images.npy", "labels.npy", "sizes.npy"):
        assert (seq.path / name).read_bytes() == (par.path / name).read_bytes()


@pytest.mark.parametrize(
    ("width", "height"), [(100, 90), (127, 500), (200, 100), (128, 128), (300, 140), (40, 30)]
)
def test_a_draft_is_never_below_the_cache_side(tmp_path, width, height):
    path = tmp_path / "p.jpg"
    smooth_picture(width, height, 0).save(path, quality=90)
    image, original = cache_decode._open_file(str(path), SIDE)
    assert original == (width, height)
    assert image.width >= min(SIDE, width) and image.height >= min(SIDE, height)
    if min(width, height) < 2 * SIDE:  # no scale of 1/2 or less keeps both sides >= S
        assert image.size == (width, height)


def test_small_jpegs_give_the_same_cache_either_way(tmp_path):
    source = make_folder(tmp_path / "ds", [(100, 90), (127, 200), (40, 30)])
    full = build(source, tmp_path / "full", draft=False)
    drafted = build(source, tmp_path / "draft", draft=True)
    assert np.array_equal(full.images, drafted.images)
    assert full.sizes.tolist() == drafted.sizes.tolist()


def test_the_cache_key_tells_drafts_from_full_decodes(tmp_path):
    source = make_folder(tmp_path / "ds", [(1000, 750), (500, 400)])
    cache_root = tmp_path / "cache"
    full = build(source, cache_root, draft=False)
    # Full decode: the source's own fingerprint, as before drafts (old caches stay valid).
    assert full.meta["fingerprint"] == source.fingerprint("train")
    drafted = build(source, cache_root, draft=True)  # same folder, other key: rebuilt
    assert drafted.path == full.path
    assert drafted.meta["fingerprint"] != full.meta["fingerprint"]
    assert json.loads((drafted.path / "meta.json").read_text())["jpeg_draft"] is True
    again = build(source, cache_root, draft=False)  # and back: rebuilt, not reused
    assert again.meta["fingerprint"] == source.fingerprint("train")
    assert again.meta["created"] != drafted.meta["created"]
    assert np.array_equal(again.images, full.images)


class OwnDecode(ImageFolder):
    """A source that decodes its items its own way: the builder never drafts it."""

    def decode(self, item: str) -> Image.Image:
        return super().decode(item)


def test_sources_with_their_own_decoding_are_not_drafted(tmp_path, draft_log):
    make_folder(tmp_path / "ds", [(1000, 750), (500, 400)])
    source = OwnDecode(tmp_path / "ds")
    cached = build(source, tmp_path / "cache", draft=True)
    assert draft_calls(draft_log) == []
    assert cached.meta["jpeg_draft"] is False
    assert cached.meta["fingerprint"] == source.fingerprint("train")  # key unchanged


class JpegList(Source):
    """A source the cache has never heard of: JPEG files it lists itself, declared as image
    files decoded by ``open_image``."""

    name = "jpeg-list"
    decodes_image_files = True

    def __init__(self, files: list[Path]) -> None:
        self.path, self.classes, self._files = files[0].parent, [], files

    def splits(self) -> list[str]:
        return ["train"]

    def count(self, split: str) -> int:
        return len(self._files)

    def fingerprint(self, split: str) -> str:
        return ";".join(f.name for f in self._files)

    def items(self, split: str) -> list[tuple[str, int]]:
        return [(str(f), -1) for f in self._files]

    def decode(self, item: str) -> Image.Image:
        return open_image(item)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_new_source_declaring_image_files_is_drafted(tmp_path, monkeypatch, draft_log, workers):
    monkeypatch.setattr(cache_decode, "PARALLEL_MIN_ITEMS", 0)  # workers=2: the parallel path
    make_folder(tmp_path / "ds", [(1000, 750), (640, 480)])
    source = JpegList(sorted((tmp_path / "ds").rglob("*.jpg")))
    cached = build(source, tmp_path / "cache", draft=True, workers=workers)
    assert len(draft_calls(draft_log)) == 2
    assert cached.meta["jpeg_draft"] is True
    assert cached.sizes.tolist() == [[1000, 750], [640, 480]]


def test_which_sources_allow_drafts(tmp_path):
    """The catalogue's image-file sources say so themselves; arrays and a subclass with its
    own decode (or its own iter_images) do not."""
    make_folder(tmp_path / "ds", [(100, 90)])
    info = CATALOG["imagenette2-160"]

    class OwnImages(ImageFolder):
        def iter_images(self, split, on_error=None):
            yield from super().iter_images(split, on_error)

    def unread(kind: type[Source]) -> Source:
        return object.__new__(kind)  # the answer is the class's: no files are needed

    assert ImageFolder(tmp_path / "ds").allows_jpeg_draft()
    assert ArchiveFolder(info, tmp_path / "ds").allows_jpeg_draft()
    assert unread(NABirds).allows_jpeg_draft()
    assert not OwnDecode(tmp_path / "ds").allows_jpeg_draft()
    assert not OwnImages(tmp_path / "ds").allows_jpeg_draft()
    assert not any(unread(kind).allows_jpeg_draft() for kind in (CIFAR, STL10, FashionMNIST))


def test_pngs_are_unaffected(tmp_path, draft_log):
    source = make_folder(tmp_path / "ds", [(1000, 750), (300, 200)], suffix=".png")
    full = build(source, tmp_path / "full", draft=False)
    drafted = build(source, tmp_path / "draft", draft=True)
    assert draft_calls(draft_log) == []
    for name in ("images.npy", "labels.npy", "sizes.npy"):
        assert (full.path / name).read_bytes() == (drafted.path / name).read_bytes()
