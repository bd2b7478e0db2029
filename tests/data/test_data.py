"""Tests of sslbench.data: IDX parsing, sources, the decode-once cache, subsets, datasets."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import sslbench.data
from sslbench.data import (
    FashionMNIST,
    ImageFolder,
    IndexedImages,
    collate_batch,
    get_source,
    load_or_build,
    read_idx,
    stratified_subset,
)
from sslbench.data.cache_files import FORMAT_VERSION

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Debian Fashion-MNIST not installed at {FMNIST} (apt install fashion-mnist)",
)


def save_image(path: Path, size: tuple[int, int], color: int | tuple[int, ...], mode="RGB"):
    """Write a solid-colour image of (width, height) ``size``; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def make_classes(root: Path, per_class: dict[str, int], size=(20, 20)) -> None:
    """``root/<class>/<i>.png``, each class with its own grey level."""
    for c, (name, n) in enumerate(per_class.items()):
        for i in range(n):
            save_image(root / name / f"{i}.png", size, (40 * c, 10 * i, 0))


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array as a raw IDX file."""
    path.write_bytes(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape))
    with open(path, "ab") as f:
        f.write(arr.astype(np.uint8).tobytes())


# --- IDX and sources -------------------------------------------------------------------------


@needs_fmnist
def test_read_idx_real_files():
    images = read_idx(FMNIST / "train-images-idx3-ubyte.gz")
    labels = read_idx(FMNIST / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.min() == 0 and labels.max() == 9


def test_read_idx_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good-idx3-ubyte"
    write_idx(good, arr)
    np.testing.assert_array_equal(read_idx(good), arr)
    gz = tmp_path / "good.gz"
    gz.write_bytes(gzip.compress(good.read_bytes()))
    np.testing.assert_array_equal(read_idx(gz), arr)

    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x01\x02\x03\x04" + bytes(100))
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:-5])
    truncated_gz = tmp_path / "truncated.gz"
    truncated_gz.write_bytes(gz.read_bytes()[:-10])
    for path in (bad_magic, truncated, truncated_gz):
        with pytest.raises(ValueError, match=path.name):
            read_idx(path)


def test_get_source_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet-9000'.*fashion-mnist"):
        get_source("imagenet-9000")
    with pytest.raises(FileNotFoundError, match="nope"):
        get_source("folder", tmp_path / "nope")


def test_fashion_mnist_search_order(tmp_path, monkeypatch):
    # Uncompressed files in $SSLBENCH_DATA/fashion-mnist win over the system copy.
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    monkeypatch.setenv("SSLBENCH_DATA", str(tmp_path / "data"))
    source = get_source("fashion-mnist")
    assert source.path == folder and source.count("test") == 4
    cached = load_or_build(source, "test", None, tmp_path / "cache", progress=False)
    assert cached.images.shape == (4, 3, 28, 28) and cached.labels.tolist() == [0, 1, 2, 3]

    # Nothing anywhere and no download: one line naming all three places.
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    monkeypatch.setattr(FashionMNIST, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("SSLBENCH_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        FashionMNIST()
    msg = str(err.value)
    assert "\n" not in msg and "no network" in msg
    assert str(tmp_path / "empty" / "fashion-mnist") in msg and str(tmp_path / "system") in msg


# --- cache -----------------------------------------------------------------------------------


@needs_fmnist
def test_fashion_mnist_cache_and_reuse(tmp_path, monkeypatch):
    source = FashionMNIST(FMNIST)
    cached = load_or_build(source, "test", 224, tmp_path, progress=False)  # never upsampled
    assert cached.path == tmp_path / "fashion-mnist" / "test-28"
    assert cached.images.shape == (10000, 3, 28, 28) and cached.images.dtype == np.uint8
    assert isinstance(cached.images, np.memmap) and cached.images.flags.c_contiguous
    assert (cached.images[:, 0] == cached.images[:, 1]).all()
    assert (cached.images[:, 0] == cached.images[:, 2]).all()
    np.testing.assert_array_equal(
        cached.images[:, 0], read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")
    )
    np.testing.assert_array_equal(cached.labels, read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz"))
    assert cached.labels.dtype == np.int64 and cached.sizes.dtype == np.int32
    assert (cached.aspect == 1.0).all() and cached.classes[9] == "Ankle boot"
    meta = cached.meta
    for key in ("source", "source_path", "split", "count", "size", "fingerprint", "classes"):
        assert key in meta
    assert meta["count"] == 10000 and meta["size"] == 28 and meta["skipped"] == []
    assert meta["fingerprint"] == source.fingerprint("test")

    # Second call: loaded, not rebuilt (the source is never iterated).
    def fail(*args, **kwargs):
        raise AssertionError("cache was rebuilt")

    monkeypatch.setattr(FashionMNIST, "iter_images", fail)
    again = load_or_build(source, "test", 28, tmp_path, progress=False)
    assert again.meta["created"] == meta["created"]


def test_rebuild_when_source_or_size_changes(tmp_path):
    make_classes(tmp_path / "ds", {"a": 3, "b": 3})
    source = ImageFolder(tmp_path / "ds")
    first = load_or_build(source, "train", 16, tmp_path / "cache", progress=False)
    assert first.images[4, 0, 0, 0] == 40

    # Overwrite one image; force a new mtime in case the filesystem clock is coarse.
    target = tmp_path / "ds" / "b" / "1.png"
    save_image(target, (20, 20), (200, 0, 0))
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_or_build(source, "train", 16, tmp_path / "cache", progress=False)
    assert second.meta["fingerprint"] != first.meta["fingerprint"]
    assert second.meta["created"] != first.meta["created"]
    assert second.images[4, 0, 0, 0] == 200
    assert not list((tmp_path / "cache").rglob("*.old-*"))  # the replaced cache is deleted

    smaller = load_or_build(source, "train", 8, tmp_path / "cache", progress=False)
    assert smaller.images.shape == (6, 3, 8, 8) and smaller.path.name == "train-8"

    # A cache from another format version is rebuilt too.
    meta_file = smaller.path / "meta.json"
    meta_file.write_text(json.dumps({**smaller.meta, "format_version": -1}))
    rebuilt = load_or_build(source, "train", 8, tmp_path / "cache", progress=False)
    assert rebuilt.meta["format_version"] == FORMAT_VERSION


def test_killed_build_leaves_no_cache(tmp_path):
    make_classes(tmp_path / "ds", {"a": 20, "b": 20})
    cache_root = tmp_path / "cache"
    # A build whose source iterator is slow, so there is time to kill it mid-way.
    code = f"""
import time
from pathlib import Path
from sslbench.data import ImageFolder, load_or_build
plain = ImageFolder.iter_images
def slow(self, split, on_error=None):
    for item in plain(self, split, on_error):
        time.sleep(0.1)
        yield item
ImageFolder.iter_images = slow
load_or_build(ImageFolder({str(tmp_path / "ds")!r}), "train", 16, Path({str(cache_root)!r}))
"""
    src_dir = Path(sslbench.data.__file__).parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src_dir), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    source = ImageFolder(tmp_path / "ds")
    final = cache_root / source.cache_key() / "train-16"
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if list(final.parent.glob("train-16.partial-*/images.npy")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"build ended before it could be killed: {proc.stderr.read()}"
    time.sleep(0.3)  # let it write a few images
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    assert not final.exists()
    assert len(list(final.parent.glob("train-16.partial-*"))) == 1
    cached = load_or_build(source, "train", 16, cache_root, progress=False)
    assert cached.images.shape == (40, 3, 16, 16) and cached.labels.tolist() == [0] * 20 + [1] * 20
    assert not list(final.parent.glob("train-16.partial-*"))


def test_folder_layouts(tmp_path):
    # Classes follow sorted folder names; aspect ratio and greyscale handling.
    root = tmp_path / "labeled"
    save_image(root / "zebra" / "wide.png", (64, 32), (255, 0, 0))
    save_image(root / "apple" / "grey.PNG", (16, 16), 77, mode="L")
    save_image(root / "apple" / "photo.JPG", (30, 40), (0, 0, 255))
    (root / "apple" / "notes.txt").write_text("not an image")
    source = get_source("folder", root)
    assert source.classes == ["apple", "zebra"] and source.splits() == ["train"]
    cached = load_or_build(source, "train", 16, tmp_path / "cache", progress=False)
    assert cached.labels.tolist() == [0, 0, 1]  # apple/grey, apple/photo, zebra/wide
    assert cached.sizes.tolist() == [[16, 16], [30, 40], [64, 32]]
    np.testing.assert_allclose(cached.aspect, [1.0, 0.75, 2.0])
    assert cached.aspect.dtype == np.float32
    assert (cached.images[0] == 77).all()  # greyscale -> 3 identical channels
    assert cached.images[2, :, 8, 8].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match="test"):
        load_or_build(source, "test", 16, tmp_path / "cache", progress=False)

    # Flat folder: unlabeled.
    flat = tmp_path / "flat"
    for i in range(3):
        save_image(flat / f"{i}.jpeg", (10, 12), (i, i, i))
    flat_source = ImageFolder(flat)
    assert flat_source.classes == []
    cached = load_or_build(flat_source, "train", 8, tmp_path / "cache", progress=False)
    assert cached.labels.tolist() == [-1, -1, -1] and cached.classes == []

    # Same base name elsewhere: a different cache directory.
    other = tmp_path / "elsewhere" / "flat"
    save_image(other / "x.png", (8, 8), 0)
    assert ImageFolder(other).cache_key() != flat_source.cache_key()


def test_train_val_split_folders(tmp_path):
    make_classes(tmp_path / "ds" / "train", {"cat": 2, "dog": 3})
    make_classes(tmp_path / "ds" / "val", {"dog": 1})
    source = ImageFolder(tmp_path / "ds")
    assert source.splits() == ["train", "test"] and source.classes == ["cat", "dog"]
    train = load_or_build(source, "train", 8, tmp_path / "cache", progress=False)
    test = load_or_build(source, "test", 8, tmp_path / "cache", progress=False)
    assert train.labels.tolist() == [0, 0, 1, 1, 1] and test.labels.tolist() == [1]
    assert test.meta["split"] == "test" and test.path.name == "test-8"


def test_corrupt_image_skipped_or_strict(tmp_path, capsys):
    make_classes(tmp_path / "ds", {"a": 2, "b": 2})
    bad = tmp_path / "ds" / "a" / "broken.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    source = ImageFolder(tmp_path / "ds")
    cached = load_or_build(source, "train", 8, tmp_path / "cache", progress=False)
    err = capsys.readouterr().err
    assert err.startswith("sslbench: warning: ") and "a/broken.jpg" in err
    assert cached.images.shape == (4, 3, 8, 8) and cached.labels.tolist() == [0, 0, 1, 1]
    assert cached.meta["count"] == 4 and cached.meta["skipped"] == [str(bad)]
    assert cached.images[3, 0, 0, 0] == 40  # rows after the skipped file are in place

    with pytest.raises(ValueError, match="broken.jpg") as err:
        load_or_build(source, "train", 8, tmp_path / "strict", progress=False, strict=True)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "strict").rglob("*.partial-*"))  # failed build cleaned up

    # The cache built without strict is not taken as complete by a strict run.
    with pytest.raises(ValueError, match="broken.jpg.*dataset.strict=false") as err:
        load_or_build(source, "train", 8, tmp_path / "cache", progress=False, strict=True)
    assert "\n" not in str(err.value)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG through Pillow's RGB conversion came out white wherever it was >= 255."""
    folder = tmp_path / "ds" / "a"
    folder.mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 65535, 8).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(folder / "deep.png")  # mode I;16
    cached = load_or_build(ImageFolder(tmp_path / "ds"), "train", 8, tmp_path / "c", progress=False)
    row = cached.images[0, 0, 0].astype(int)
    expected = np.rint(np.linspace(0, 65535, 8) * 255 / 65535)
    assert np.abs(row - expected).max() <= 2, row  # a resample may move a level or two
    assert (cached.images[0, 0] == cached.images[0, 1]).all()  # grey: the same in R and G


# --- subsets and datasets --------------------------------------------------------------------


def test_stratified_subset():
    rng = np.random.default_rng(1)
    labels = rng.permutation(np.repeat(np.arange(4), [500, 300, 150, 50]))
    n = 137
    idx = stratified_subset(labels, n, seed=0)
    assert len(idx) == n and idx.dtype == np.int64 and (np.diff(idx) > 0).all()
    expected = np.bincount(labels) * n / len(labels)
    assert (np.abs(np.bincount(labels[idx], minlength=4) - expected) < 1).all()
    np.testing.assert_array_equal(idx, stratified_subset(labels, n, seed=0))
    assert not np.array_equal(idx, stratified_subset(labels, n, seed=1))
    np.testing.assert_array_equal(stratified_subset(labels, 5000, 0), np.arange(len(labels)))
    np.testing.assert_array_equal(stratified_subset(labels, None, 0), np.arange(len(labels)))

    unlabeled = np.full(100, -1)
    sub = stratified_subset(unlabeled, 10, seed=3)
    assert len(np.unique(sub)) == 10 and sub.max() < 100
    assert not np.array_equal(sub, stratified_subset(unlabeled, 10, seed=4))


def test_indexed_images_batches(tmp_path):
    make_classes(tmp_path / "ds", {"a": 5, "b": 5, "c": 5})
    cached = load_or_build(ImageFolder(tmp_path / "ds"), "train", 8, tmp_path / "cache", False)
    ds = IndexedImages(cached, stratified_subset(cached.labels, 9, seed=0))
    assert len(ds) == 9
    image, aspect, label = ds[4]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
    assert aspect.dtype == torch.float32 and label.dtype == torch.int64

    request = [7, 0, 4, 4, 2]
    images, aspects, labels = ds.__getitems__(request)
    assert images.shape == (5, 3, 8, 8) and aspects.shape == (5,) and labels.dtype == torch.int64
    for row, i in enumerate(request):
        assert torch.equal(images[row], ds[i][0]) and labels[row] == ds[i][2]

    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_batch)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 4, 1]
    seen = torch.cat([b[2] for b in batches]).sort().values
    assert seen.tolist() == sorted(cached.labels[ds.indices].tolist())
