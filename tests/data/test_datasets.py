"""The dataset catalogue end to end, offline: miniature archives in the real layouts are
served from 127.0.0.1 (through SSLBENCH_MIRROR, as behind a proxy), downloaded, verified,
unpacked, cached and trained on; NABirds is parsed from a miniature folder and archive.

The catalogue pins the real archives' sizes and MD5s; a miniature cannot match them, so
each test swaps in its miniature's own size (or drops the MD5) for that one dataset.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RUN, make_tar
from http_server import FileServer, serve, unused_port
from PIL import Image

from sslbench.cli import main
from sslbench.data import catalog, load_or_build
from sslbench.data.catalog import CATALOG, get_source

WNIDS = ["n01440764", "n02102040", "n02979186"]  # tench, English springer, cassette player


@pytest.fixture(autouse=True)
def _data_in_tmp(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SSLBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SSLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SSLBENCH_MIRROR", raising=False)


def _jpeg(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _mini_imagenette(name: str, per_class: int = 8, corrupt: bool = False) -> bytes:
    files = {}
    for split, count in (("train", per_class), ("val", 3)):
        for c, wnid in enumerate(WNIDS):
            for i in range(count):
                files[f"{name}/{split}/{wnid}/{wnid}_{i}.JPEG"] = _jpeg(100 * c + i)
    if corrupt:
        files[f"{name}/train/{WNIDS[0]}/broken.JPEG"] = _jpeg(999)[:200]  # cut-off JPEG
    return make_tar(files)


def _pin_miniature(monkeypatch, name: str, data: bytes) -> None:
    """Make the catalogue expect the miniature archive instead of the real one."""
    info = CATALOG[name]
    archive = dataclasses.replace(info.archive, size=len(data), md5=None)
    monkeypatch.setitem(CATALOG, name, dataclasses.replace(info, archive=archive))


@pytest.fixture
def imagenette_mirror(monkeypatch):
    data = _mini_imagenette("imagenette2-160", corrupt=True)
    _pin_miniature(monkeypatch, "imagenette2-160", data)
    with serve({"/mirror/imagenette2-160.tgz": data}) as server:
        monkeypatch.setenv("SSLBENCH_MIRROR", server.url("/mirror"))
        yield server


def test_every_dataset_is_listed_with_a_config(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SSLBENCH_DATA", str(tmp_path / "data"))  # nothing downloaded here
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    from sslbench.config import group_options

    for name in CATALOG:
        assert f"\n{name} " in out
        assert name in group_options("dataset")
    assert "nabirds" in out and "555" in out and "100,000 unlabeled" in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    # the status column says it in words, not a bare "-"
    assert "  not downloaded  " in rows["cifar100"] and "  your folder  " in rows["folder"]


def test_prepare_downloads_verifies_unpacks_and_caches(imagenette_mirror, tmp_path, capsys):
    assert main(["datasets", "prepare", "imagenette2-160", "image_size=32"]) == 0
    out = capsys.readouterr().out
    # 40 x 30 pictures are cached with every pixel (at their long side), whatever the crops.
    assert "imagenette2-160/train: 24 images at 40 px, 1 unreadable skipped" in out
    assert "imagenette2-160/test: 9 images at 40 px" in out
    assert [r.path for r in imagenette_mirror.requests] == ["/mirror/imagenette2-160.tgz"]
    source = get_source("imagenette2-160", progress=False)
    train = load_or_build(source, "train", 32, progress=False)
    assert train.classes == WNIDS  # class ids: the sorted WordNet ids
    assert train.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert train.sizes[0].tolist() == [40, 30]  # the original size is kept for crops
    assert any("broken.JPEG" in name for name in train.meta["skipped"])
    assert main(["datasets", "list"]) == 0
    listed = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("imagenette2-160 ")
    ]
    assert "cached 32, 40 px" in listed[0]  # 32: the explicit load_or_build above
    # The default cache of its 34 files (one unreadable) at 3 x 40 x 40 bytes each.
    assert f"{34 * 3 * 40 * 40 / 1000:.1f} KB at 40 px" in listed[0]

    # A second prepare is a no-op: no request, no rebuild.
    created = json.loads((train.path / "meta.json").read_text())["created"]
    assert main(["datasets", "prepare", "imagenette2-160", "image_size=32"]) == 0
    assert len(imagenette_mirror.requests) == 1
    assert json.loads((train.path / "meta.json").read_text())["created"] == created


def test_pretrain_fetches_and_trains_on_a_catalogue_dataset(imagenette_mirror, tmp_path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY_RUN, "dataset=imagenette2-160", "batch_size=16", "dataset.max_test=null",
            f"run_dir={run_dir}"]  # fmt: skip
    assert main(["pretrain", *args]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["dataset"] == "imagenette2-160"
    assert results["linear_top5"] is None  # 3 classes: a top-5 would always hold the right one


def test_dataset_url_replaces_the_host(monkeypatch, tmp_path) -> None:
    data = _mini_imagenette("imagenette2-160", per_class=2)
    _pin_miniature(monkeypatch, "imagenette2-160", data)
    with serve({"/elsewhere/copy.tgz": data}) as server:
        url = server.url("/elsewhere/copy.tgz")
        assert main(["datasets", "prepare", "imagenette2-160", f"dataset.url={url}"]) == 0
        assert server.requests[0].path == "/elsewhere/copy.tgz"


def test_offline_is_one_line_naming_the_url_and_where_to_put_it(monkeypatch, capsys) -> None:
    monkeypatch.setenv("SSLBENCH_MIRROR", f"http://127.0.0.1:{unused_port()}/mirror")
    assert main(["datasets", "prepare", "imagewoof2-160"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "/mirror/imagewoof2-160.tgz" in err and "imagewoof2-160.tgz" in err
    assert "by hand" in err


def test_a_wrong_size_is_refused_and_nothing_left(monkeypatch, tmp_path, capsys) -> None:
    data = _mini_imagenette("imagenette2-160", per_class=2)
    # the real pinned size (99 MB) cannot match the miniature
    with serve({"/mirror/imagenette2-160.tgz": data}) as server:
        monkeypatch.setenv("SSLBENCH_MIRROR", server.url("/mirror"))
        assert main(["datasets", "prepare", "imagenette2-160"]) == 1
    assert "99003388" in capsys.readouterr().err.replace(",", "")
    leftovers = [p.name for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert not [n for n in leftovers if n.endswith((".tgz", ".part"))]


def test_unknown_dataset_names_the_choices(capsys) -> None:
    assert main(["datasets", "prepare", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'imagenet'" in err and "imagewoof2-160" in err


# ---------------------------------------------------------------------------------------------
# NABirds (by hand), CIFAR, STL-10: their own file formats
# ---------------------------------------------------------------------------------------------


def _mini_nabirds(root: Path) -> None:
    """3 leaf classes with images, one parent class without; images 1-6 train, 7-12 test."""
    (root / "images").mkdir(parents=True)
    classes = {"0": "Birds", "295": "Swans", "313": "Mute Swan", "314": "Trumpeter Swan",
               "316": "Tundra Swan"}  # fmt: skip
    (root / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in classes.items()))
    (root / "hierarchy.txt").write_text("295 0\n313 295\n314 295\n316 295\n")
    images, labels, split = [], [], []
    for i in range(1, 13):
        cls = ["313", "314", "316"][i % 3]
        uuid = f"{i:08x}0000000000000000"
        relative = f"0{cls}/{uuid}.jpg"
        (root / "images" / f"0{cls}").mkdir(exist_ok=True)
        (root / "images" / relative).write_bytes(_jpeg(i, (50, 40)))
        images.append(f"{uuid} {relative}\n")
        labels.append(f"{uuid} {cls}\n")
        split.append(f"{uuid} {1 if i <= 6 else 0}\n")
    (root / "images.txt").write_text("".join(images))
    (root / "image_class_labels.txt").write_text("".join(labels))
    (root / "train_test_split.txt").write_text("".join(split))
    (root / "bounding_boxes.txt").write_text("")


def test_nabirds_parses_the_official_split_from_a_folder(tmp_path) -> None:
    _mini_nabirds(tmp_path / "nabirds")
    source = get_source("nabirds", tmp_path / "nabirds", progress=False)
    assert source.classes == ["Mute Swan", "Trumpeter Swan", "Tundra Swan"]  # leaves only
    assert source.count("train") == 6 and source.count("test") == 6
    train = load_or_build(source, "train", 32, progress=False)
    # image i has class index (i % 3) mapped to 313/314/316 -> 0/1/2
    assert train.labels.tolist() == [i % 3 for i in range(1, 7)]
    assert train.sizes[0].tolist() == [50, 40]


def _nabirds_archive(tmp_path: Path, name: str = "nabirds.tar.gz", extra: str = "") -> Path:
    _mini_nabirds(tmp_path / "src" / "nabirds")
    if extra:
        (tmp_path / "src" / "nabirds" / "extra.txt").write_text(extra)
    archive = tmp_path / name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "nabirds", arcname="nabirds")
    return archive


def test_nabirds_from_its_archive_and_when_missing(tmp_path, capsys) -> None:
    archive = _nabirds_archive(tmp_path)
    source = get_source("nabirds", archive, progress=False)
    assert source.count("test") == 6
    assert str(source.path).startswith(str(tmp_path / "data"))  # unpacked under SSLBENCH_DATA
    assert main(["datasets", "prepare", "nabirds", "dataset.path=null"]) == 0  # found unpacked
    capsys.readouterr()
    (tmp_path / "data" / "nabirds").rename(tmp_path / "gone")
    assert main(["datasets", "prepare", "nabirds"]) == 1
    err = capsys.readouterr().err
    assert "https://dl.allaboutbirds.org/nabirds" in err and "dataset.path=" in err


def test_a_users_archive_is_never_deleted_and_never_ignored(tmp_path, capsys) -> None:
    """NABirds' own help: put the archive in its folder, or pass its path. Either way the
    archive stays where it is, and a second, different archive is unpacked too."""
    home = tmp_path / "data" / "nabirds"
    home.mkdir(parents=True)
    first = _nabirds_archive(tmp_path)
    first = first.rename(home / first.name)
    assert main(["datasets", "prepare", "nabirds"]) == 0  # found in its folder
    assert main(["datasets", "prepare", "nabirds", f"dataset.path={first}"]) == 0
    assert first.is_file()

    second = _nabirds_archive(tmp_path / "v2", extra="a newer release")
    source = get_source("nabirds", second, progress=False)
    assert (source.path / "extra.txt").read_text() == "a newer release"
    assert first.is_file() and second.is_file()
    copies = sorted(p.name for p in home.iterdir() if p.is_dir())
    assert len(copies) == 2 and all(c.startswith("nabirds-") for c in copies)
    capsys.readouterr()


def test_cifar10_reads_the_authors_pickles(monkeypatch, tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)

    def batch(n: int) -> bytes:
        return pickle.dumps({"data": images[:n].reshape(n, -1), "labels": list(range(n))})

    files = {f"cifar-10-batches-py/data_batch_{i}": batch(2) for i in range(1, 6)}
    files["cifar-10-batches-py/test_batch"] = batch(5)
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({"label_names": list("abcdefghij")})
    data = make_tar(files)
    _pin_miniature(monkeypatch, "cifar10", data)
    with serve({"/m/cifar-10-python.tar.gz": data}) as server:
        monkeypatch.setenv("SSLBENCH_MIRROR", server.url("/m"))
        source = get_source("cifar10", progress=False)
    test = load_or_build(source, "test", 32, progress=False)
    assert source.classes == list("abcdefghij") and test.labels.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(test.images[3], images[3])  # channel planes, row-major
    assert catalog.locate("cifar10", download=False) == source.path


def test_stl10_pretrains_on_train_and_unlabeled_and_keeps_orientation(tmp_path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    image = np.zeros((96, 96, 3), dtype=np.uint8)
    image[:10, :, 0] = 255  # a red band along the top
    stored = np.ascontiguousarray(image.transpose(2, 1, 0))  # STL-10 is column-major
    for split, n in (("train", 2), ("test", 1), ("unlabeled", 3)):
        (folder / f"{split}_X.bin").write_bytes(np.concatenate([stored.ravel()] * n).tobytes())
    (folder / "train_y.bin").write_bytes(bytes([1, 10]))
    (folder / "test_y.bin").write_bytes(bytes([3]))
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    source = get_source("stl10", folder, progress=False)
    # The usual protocol pretrains on train + unlabeled (105k images in the real dataset).
    assert source.pretrain_split() == "train+unlabeled" and source.count("train+unlabeled") == 5
    assert source.splits() == ["train", "test", "train+unlabeled"]  # what a run caches
    assert source.count("unlabeled") == 3
    train = load_or_build(source, "train", 96, progress=False)
    assert train.labels.tolist() == [0, 9]
    assert (train.images[0, 0, :10] == 255).all() and (train.images[0, 0, 20:] == 0).all()
    pretrain = load_or_build(source, source.pretrain_split(), 96, progress=False)
    assert pretrain.labels.tolist() == [0, 9, -1, -1, -1]
    np.testing.assert_array_equal(pretrain.images[:2], train.images)
    with pytest.raises(ValueError, match="valid: train, test, unlabeled, train"):
        source.count("extra")


def test_fetch_once_for_a_grid(monkeypatch, tmp_path) -> None:
    """Two sources of the same dataset in one process download once (the second finds the
    unpacked folder)."""
    data = _mini_imagenette("imagenette2-160", per_class=2)
    _pin_miniature(monkeypatch, "imagenette2-160", data)
    server = FileServer({"/m/imagenette2-160.tgz": data}).start()
    try:
        monkeypatch.setenv("SSLBENCH_MIRROR", server.url("/m"))
        first = get_source("imagenette2-160", progress=False)
        second = get_source("imagenette2-160", progress=False)
    finally:
        server.stop()
    assert first.path == second.path and len(server.requests) == 1


def _fetch_in_child(barrier, results) -> None:
    barrier.wait()  # both processes ask at the same moment
    results.put(str(get_source("imagenette2-160", progress=False).path))


def test_two_processes_fetch_a_dataset_once(monkeypatch) -> None:
    """The runs of a grid starting together on a missing dataset download it once."""
    import multiprocessing

    data = _mini_imagenette("imagenette2-160", per_class=2)
    _pin_miniature(monkeypatch, "imagenette2-160", data)
    context = multiprocessing.get_context("fork")  # children inherit the pinned catalogue
    with serve({"/m/imagenette2-160.tgz": data}) as server:
        monkeypatch.setenv("SSLBENCH_MIRROR", server.url("/m"))
        barrier, results = context.Barrier(2), context.Queue()
        children = [context.Process(target=_fetch_in_child, args=(barrier, results))
                    for _ in range(2)]  # fmt: skip
        for child in children:
            child.start()
        paths = {results.get(timeout=60) for _ in children}
        for child in children:
            child.join(timeout=60)
    assert [child.exitcode for child in children] == [0, 0]
    assert len(paths) == 1 and len(server.requests) == 1
