"""The decode-once cache at scale: one build per cache across processes, parallel decoding,
unreadable files, no upsampling past the source, bounded memory."""

from __future__ import annotations

import fcntl
import hashlib
import io
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslbench.data import ImageFolder, cache_decode, cache_dir, load_or_build
from sslbench.data import cache as cache_module
from sslbench.data.cache_decode import _decode_rows as real_decode_rows

SIDE = 8


def make_folder(root: Path, per_class: int, classes=("a", "b"), size=(10, 12)) -> list[Path]:
    """``root/<class>/<ii>.png``, solid colour (40 * class, 10 * i, 0); returns the files."""
    files = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            path = root / name / f"{i:02d}.png"  # sorted file order is i's order
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, (40 * c, 10 * i % 256, 0)).save(path)
            files.append(path)
    return files


class CountingFolder(ImageFolder):
    """An ImageFolder that appends a line to ``counter`` for every image it decodes."""

    def __init__(self, path: Path, counter: Path, delay: float = 0.0) -> None:
        super().__init__(path)
        self.counter, self.delay = counter, delay

    def decode(self, item: str) -> Image.Image:
        with open(self.counter, "a") as f:
            f.write(f"{os.getpid()} {item}\n")
        time.sleep(self.delay)
        return super().decode(item)

    def decodes(self) -> int:
        return len(self.counter.read_text().splitlines()) if self.counter.exists() else 0


def files_bytes(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in ("images.npy", "labels.npy", "sizes.npy")}


# --- one build per cache ---------------------------------------------------------------------


def _build_in_child(root, counter, cache_root, barrier, results) -> None:
    source = CountingFolder(root, counter, delay=0.02)
    barrier.wait()  # both processes ask for the missing cache at the same moment
    cached = load_or_build(source, "train", SIDE, cache_root, progress=False, workers=1)
    digest = hashlib.sha256(np.ascontiguousarray(cached.images).tobytes()).hexdigest()
    results.put((cached.meta["created"], digest, cached.labels.tolist(), cached.sizes.tolist()))


def test_two_processes_build_once(tmp_path):
    make_folder(tmp_path / "ds", per_class=15)
    counter, cache_root = tmp_path / "decodes.txt", tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    args = (tmp_path / "ds", counter, cache_root, barrier, results)
    procs = [ctx.Process(target=_build_in_child, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    source = CountingFolder(tmp_path / "ds", counter)
    assert source.decodes() == 30  # one build: each image decoded once, not twice
    assert got[0] == got[1]  # same cache (same creation time), same pixels, labels, sizes
    target = cache_dir(source, "train", SIDE, cache_root)
    assert target.with_name(f"{target.name}.lock").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["train-8", "train-8.lock"]


def test_waiting_builder_says_so_once(tmp_path, capsys):
    make_folder(tmp_path / "ds", per_class=2)
    source = ImageFolder(tmp_path / "ds")
    target = cache_dir(source, "train", SIDE, tmp_path / "cache")
    target.parent.mkdir(parents=True)
    done: list = []
    with open(target.with_name(f"{target.name}.lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another builder holds the lock
        held.write("4321 builder-host\n")  # and says who it is, as exclusive() does
        held.flush()
        thread = threading.Thread(
            target=lambda: done.append(load_or_build(source, "train", SIDE, tmp_path / "cache"))
        )
        thread.start()
        err, deadline = "", time.monotonic() + 30
        while "waiting" not in err and time.monotonic() < deadline:
            time.sleep(0.05)
            err += capsys.readouterr().err
        assert thread.is_alive() and not done  # blocked on the lock
    thread.join(timeout=60)
    err += capsys.readouterr().err
    assert err.count(f"waiting for another process building {target}") == 1
    assert "(process 4321 on builder-host)" in err
    assert len(done[0]) == 4


# --- parallel decoding -----------------------------------------------------------------------


def test_parallel_and_sequential_caches_identical(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n = cache_decode.PARALLEL_MIN_ITEMS + 44  # just large enough to be decoded in parallel
    for i in range(n):
        w, h = int(rng.integers(6, 30)), int(rng.integers(6, 30))
        path = tmp_path / "ds" / f"c{i % 3}" / f"{i:04d}.{'jpg' if i % 5 == 0 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels if i % 7 else pixels[:, :, 0])  # some greyscale
        image.save(path)
    source = ImageFolder(tmp_path / "ds")

    calls = []
    real = cache_decode._decode_parallel
    monkeypatch.setattr(
        cache_decode, "_decode_parallel", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    seq = load_or_build(source, "train", 16, tmp_path / "seq", progress=False, workers=1)
    assert not calls
    par = load_or_build(source, "train", 16, tmp_path / "par", progress=False, workers=2)
    assert calls == [1]
    assert files_bytes(seq.path) == files_bytes(par.path)
    assert len(par) == n and par.meta["count"] == n and par.meta["skipped"] == []
    assert par.sizes[:, 0].min() >= 6 and not (par.sizes == par.sizes[0]).all()


class SlowFirst(ImageFolder):
    def decode(self, item: str) -> Image.Image:
        if item.endswith(f"{os.sep}a{os.sep}00.png"):
            time.sleep(0.5)
        return super().decode(item)


@pytest.mark.parametrize("workers", [1, 2])
def test_unreadable_images_skipped_in_order(tmp_path, monkeypatch, capsys, workers):
    monkeypatch.setattr(cache_decode, "PARALLEL_MIN_ITEMS", 0)  # workers=2: the parallel path
    root = tmp_path / "ds"
    good = []
    for c, name in enumerate(("a", "b")):
        for i in range(20):
            path = root / name / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (10 + i, 12 + c), (40 * c, 10 * i, 0)).save(path)
            good.append((path, c, i))
    # Item 3 (after a/02.png) and item 33 (after b/11.png): in the first and the last of the
    # parallel build's three chunks.
    corrupt = root / "a" / "02a_corrupt.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buffer, "JPEG")
    corrupt.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # truncated
    fake = root / "b" / "11x.jpg"
    fake.write_text("not an image at all")
    source = ImageFolder(root)

    cached = load_or_build(
        source, "train", SIDE, tmp_path / "cache", progress=False, workers=workers
    )
    messages = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    assert len(messages) == 1  # one line for the whole split, not one per file
    assert all(part in messages[0] for part in ("skipped 2", "02a_corrupt.jpg", "11x.jpg"))

    meta = cached.meta
    assert meta["count"] == 40 and len(cached) == 40
    assert meta["skipped"] == [str(corrupt), str(fake)]
    reasons = meta["skipped_reasons"]
    assert list(reasons) == meta["skipped"]
    assert "truncated" in reasons[str(corrupt)].lower() and "identify" in reasons[str(fake)]
    assert cached.labels.tolist() == [0] * 20 + [1] * 20
    for row, (_path, c, i) in enumerate(good):  # every row is its own image, sizes aligned
        assert cached.images[row, :, 4, 4].tolist() == [40 * c, 10 * i, 0]
        assert cached.sizes[row].tolist() == [10 + i, 12 + c]
    assert cached.images[32, :, 0, 0].tolist() == [40, 120, 0]  # b/12.png, after both holes

    # Strict: the first bad file in item order, even when a later chunk fails first (the first
    # chunk is slowed down, so with 2 workers the third chunk finishes before it).
    with pytest.raises(ValueError, match="02a_corrupt.jpg") as err:
        load_or_build(
            SlowFirst(root), "train", SIDE, tmp_path / "strict", False, strict=True, workers=workers
        )
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "strict").rglob("*.partial-*"))


# --- sizes and reuse -------------------------------------------------------------------------


class Capped(ImageFolder):
    def max_side(self) -> int | None:
        return 20


def test_never_upsampled_beyond_max_side(tmp_path):
    make_folder(tmp_path / "ds", per_class=2, size=(40, 30))
    source = Capped(tmp_path / "ds")
    cached = load_or_build(source, "train", 64, tmp_path / "cache", progress=False)
    assert cached.images.shape == (4, 3, 20, 20) and cached.path.name == "train-20"
    assert cached.meta["size"] == 20 and cached.meta["requested_size"] == 64
    assert cached.sizes.tolist() == [[40, 30]] * 4  # the original size, as always
    assert cache_dir(source, "train", 64, tmp_path / "cache") == cached.path

    smaller = load_or_build(source, "train", 16, tmp_path / "cache", progress=False)
    assert smaller.side == 16 and smaller.meta["requested_size"] == 16
    assert load_or_build(source, "train", None, tmp_path / "cache", progress=False).side == 20
    with pytest.raises(ValueError, match="cache size is required"):
        load_or_build(ImageFolder(tmp_path / "ds"), "train", None, tmp_path / "x", progress=False)


def test_second_call_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_decode, "PARALLEL_MIN_ITEMS", 0)
    make_folder(tmp_path / "ds", per_class=10)
    source = CountingFolder(tmp_path / "ds", tmp_path / "decodes.txt")
    first = load_or_build(source, "train", SIDE, tmp_path / "cache", progress=False, workers=2)
    assert source.decodes() == 20

    def fail(*args, **kwargs):
        raise AssertionError("cache was rebuilt")

    monkeypatch.setattr(cache_module, "_build", fail)
    again = load_or_build(source, "train", SIDE, tmp_path / "cache", progress=False, workers=2)
    assert source.decodes() == 20 and again.meta["created"] == first.meta["created"]
    np.testing.assert_array_equal(again.images, first.images)


# --- bounded memory --------------------------------------------------------------------------


def _spy_decode_rows(items, start, path, side, strict):
    """Runs in a worker: the real chunk decoder, logging how many bytes it sends back."""
    result = real_decode_rows(items, start, path, side, strict)
    with open(os.environ["SSLBENCH_TEST_PAYLOAD_LOG"], "a") as f:
        f.write(f"{len(items)} {len(pickle.dumps(result))}\n")
    return result


def test_workers_send_back_no_pixels(tmp_path, monkeypatch):
    # The pixels go through the memory-mapped file, not the result pipe: what a worker returns
    # per chunk is a few bytes per image, whatever the image size (here 3 x 48 x 48 each).
    monkeypatch.setattr(cache_decode, "PARALLEL_MIN_ITEMS", 0)
    monkeypatch.setattr(cache_decode, "_decode_rows", _spy_decode_rows)
    log = tmp_path / "payloads.txt"
    monkeypatch.setenv("SSLBENCH_TEST_PAYLOAD_LOG", str(log))
    make_folder(tmp_path / "ds", per_class=20, size=(60, 50))
    cached = load_or_build(
        ImageFolder(tmp_path / "ds"), "train", 48, tmp_path / "cache", progress=False, workers=2
    )
    assert cached.images[25, :, 10, 10].tolist() == [40, 50, 0]  # b/05.png
    chunks = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert sum(k for k, _ in chunks) == 40 and len(chunks) >= 2
    row_bytes = 3 * 48 * 48
    for k, payload in chunks:
        assert payload < 1000 + 64 * k < k * row_bytes / 4


def _processes_in_group(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            pids.append(int(stat.parent.name))
    return pids


def test_a_killed_parallel_build_leaves_no_lock_and_no_workers(tmp_path):
    """kill -9 of a build whose workers are decoding: the workers exit, and the next build
    neither waits forever on a lock they inherited nor finds anything half-written."""
    n = cache_decode.PARALLEL_MIN_ITEMS + 64
    for i in range(n):
        path = tmp_path / "ds" / f"c{i % 2}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 10), (i % 256, 0, 0)).save(path)
    cache_root = tmp_path / "cache"
    code = f"""
import time
from pathlib import Path
from sslbench.data import ImageFolder, load_or_build
from sslbench.data import cache_decode
real = cache_decode._decode_rows
def slow(*args):
    time.sleep(60)  # the workers are busy when the parent is killed
    return real(*args)
cache_decode._decode_rows = slow
load_or_build(ImageFolder({str(tmp_path / "ds")!r}), "train", 8, Path({str(cache_root)!r}),
              progress=False, workers=2)
"""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(cache_module.__file__).parents[2]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(_processes_in_group(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # the parent and its two workers
    assert len(_processes_in_group(proc.pid)) >= 3, "the workers never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    deadline = time.monotonic() + 20
    while _processes_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_in_group(proc.pid) == []  # the workers went with their parent
    source = ImageFolder(tmp_path / "ds")
    done: list = []
    thread = threading.Thread(
        target=lambda: done.append(load_or_build(source, "train", 8, cache_root, progress=False))
    )
    thread.start()
    thread.join(timeout=60)
    assert done and len(done[0]) == n  # not blocked on a lock left behind


def test_a_full_disk_is_one_clear_error_before_decoding(tmp_path, monkeypatch):
    """The cache file is given its space up front: a full disk is said before any image is
    decoded (it was a SIGBUS, exit 135, mid-build), and nothing is left behind."""
    import errno

    make_folder(tmp_path / "ds", per_class=2)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as info:
        load_or_build(ImageFolder(tmp_path / "ds"), "train", SIDE, tmp_path / "cache")
    message = str(info.value)
    assert message.startswith("no space left on ") and "images.npy (needs " in message
    assert "GB free)" in message and "\n" not in message
    assert not list((tmp_path / "cache").rglob("*.partial-*"))
