"""Tests of sslbench.data.download, offline against a local HTTP server (tests/http_server.py)."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from conftest import make_tar
from http_server import FileServer, serve, unused_port

import sslbench.data.download as dl
from sslbench.data.checksums import RECORD, Hashes
from sslbench.data.download import (
    Archive,
    DownloadError,
    ExtractError,
    data_root,
    download,
    fetch_and_extract,
    resolve_url,
)
from sslbench.data.extract import MARKER

CANONICAL = "https://example.invalid/fast-ai-imageclas/data.tgz"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch) -> None:
    """Never the user's mirror or data folder."""
    monkeypatch.delenv("SSLBENCH_MIRROR", raising=False)
    monkeypatch.delenv("SSLBENCH_DATA", raising=False)


@pytest.fixture
def server():
    with serve() as s:
        yield s


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(n: int = 200_000, seed: int = 0) -> bytes:
    """``n`` incompressible bytes that start like a gzip file (the archives here are .tgz)."""
    return b"\x1f\x8b" + random.Random(seed).randbytes(n - 2)


def leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- download ------------------------------------------------------------------------------


def test_download_via_mirror(server: FileServer, tmp_path, monkeypatch):
    data = make_tar({"data/a.txt": b"hello", "data/b/c.txt": b"world"})
    server.files["/mirror/data.tgz"] = data
    monkeypatch.setenv("SSLBENCH_MIRROR", server.url("/mirror/"))
    archive = Archive("data", CANONICAL, "data.tgz", size=len(data))

    path = download(archive, tmp_path, progress=False, timeout=5)

    assert path == tmp_path / "data.tgz" and path.read_bytes() == data
    assert [(r.method, r.path, r.range) for r in server.requests] == [
        ("GET", "/mirror/data.tgz", None)
    ]
    assert server.requests[0].user_agent.startswith("sslbench/")
    entry = json.loads((tmp_path / RECORD).read_text())["data.tgz"]
    assert entry["sha256"] == sha256(data) and entry["size"] == len(data)
    assert entry["url"] == server.url("/mirror/data.tgz") and entry["first_downloaded"]
    assert leftovers(tmp_path) == sorted([RECORD, "data.tgz"])


def test_download_url_override_wins_over_mirror(server: FileServer, tmp_path, monkeypatch):
    data = payload(5000)
    server.files["/elsewhere/x.bin"] = data
    monkeypatch.setenv("SSLBENCH_MIRROR", server.url("/mirror"))  # would 404
    archive = Archive("x", CANONICAL, "data.tgz", sha256=sha256(data))

    path = download(archive, tmp_path, url=server.url("/elsewhere/x.bin"), progress=False)

    assert path.read_bytes() == data
    assert [r.path for r in server.requests] == ["/elsewhere/x.bin"]


def test_resolve_url(monkeypatch, tmp_path):
    assert resolve_url(CANONICAL) == CANONICAL
    monkeypatch.setenv("SSLBENCH_MIRROR", "http://127.0.0.1:8000/mirror/")
    assert resolve_url(CANONICAL) == "http://127.0.0.1:8000/mirror/data.tgz"
    assert resolve_url(CANONICAL, "http://h/y.tgz") == "http://h/y.tgz"
    monkeypatch.setenv("SSLBENCH_MIRROR", str(tmp_path))  # a plain folder becomes file://
    assert resolve_url(CANONICAL) == (tmp_path / "data.tgz").as_uri()


def test_download_from_local_folder_mirror(tmp_path, monkeypatch):
    data = payload(3000)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "data.tgz").write_bytes(data)
    monkeypatch.setenv("SSLBENCH_MIRROR", str(tmp_path / "mirror"))

    path = download(Archive("d", CANONICAL, "data.tgz"), tmp_path / "dest", progress=False)

    assert path.read_bytes() == data


def test_data_root(monkeypatch, tmp_path):
    assert data_root() == Path("~/.cache/sslbench/data").expanduser()
    monkeypatch.setenv("SSLBENCH_DATA", str(tmp_path))
    assert data_root() == tmp_path


@pytest.mark.parametrize("wrong", ["size", "sha256", "md5"])
def test_pinned_mismatch_is_refused_and_nothing_kept(server: FileServer, tmp_path, wrong):
    data = payload(10_000)
    server.files["/d.bin"] = data
    right = {"size": len(data), "sha256": sha256(data), "md5": hashlib.md5(data).hexdigest()}
    pins = {**right, wrong: len(data) + 1 if wrong == "size" else "0" * len(right[wrong])}
    url = server.url("/d.bin")

    with pytest.raises(DownloadError) as info:
        download(Archive("d", url, "d.bin", **pins), tmp_path, progress=False)

    message = str(info.value)
    assert url in message and "\n" not in message
    assert f"{wrong} expected {pins[wrong]}" in message and f"got {right[wrong]}" in message
    assert leftovers(tmp_path) == []  # neither d.bin nor d.bin.part nor a record

    # The right pins pass.
    path = download(Archive("d", url, "d.bin", **right), tmp_path, progress=False)
    assert path.read_bytes() == data


def test_cut_off_download_resumes_with_range(server: FileServer, tmp_path):
    data = payload(300_000)
    server.files["/d.tgz"] = data
    server.cut("/d.tgz", after=120_000)
    archive = Archive("d", server.url("/d.tgz"), "d.tgz")

    with pytest.raises(DownloadError) as info:
        download(archive, tmp_path, progress=False, timeout=5)
    assert "120000 of 300000" in str(info.value) and str(tmp_path / "d.tgz") in str(info.value)
    part = tmp_path / "d.tgz.part"
    assert part.stat().st_size == 120_000 and not (tmp_path / "d.tgz").exists()

    path = download(archive, tmp_path, progress=True, timeout=5)  # also exercise the bars

    assert server.requests[-1].range == "bytes=120000-"
    assert sha256(path.read_bytes()) == sha256(data)
    assert not part.exists()
    assert json.loads((tmp_path / RECORD).read_text())["d.tgz"]["sha256"] == sha256(data)


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path):
    data = payload(100_000)
    server.files["/d.tgz"] = data
    server.ignore_range = True
    (tmp_path / "d.tgz.part").write_bytes(b"x" * 40_000)  # not even a prefix of the file

    path = download(Archive("d", server.url("/d.tgz"), "d.tgz"), tmp_path, progress=False)

    assert server.requests[-1].range == "bytes=40000-"  # asked, but got a 200
    assert path.read_bytes() == data


def test_complete_part_is_finished_without_refetching(server: FileServer, tmp_path):
    data = payload(50_000)
    server.files["/d.tgz"] = data
    (tmp_path / "d.tgz.part").write_bytes(data)

    path = download(
        Archive("d", server.url("/d.tgz"), "d.tgz", sha256=sha256(data)), tmp_path, progress=False
    )

    assert path.read_bytes() == data
    assert [r.range for r in server.requests] == ["bytes=50000-"]  # answered 416


def test_part_longer_than_server_file_starts_again(server: FileServer, tmp_path):
    data = payload(10_000)
    server.files["/d.tgz"] = data
    (tmp_path / "d.tgz.part").write_bytes(payload(20_000, seed=3))

    path = download(Archive("d", server.url("/d.tgz"), "d.tgz"), tmp_path, progress=False)

    assert path.read_bytes() == data
    assert [r.range for r in server.requests] == ["bytes=20000-", None]  # 416, then all of it


def test_changed_upstream_file_is_refused(server: FileServer, tmp_path):
    """Once an archive has extracted, its SHA-256 is the reference for later copies."""
    first = make_tar({"d/a.txt": b"first"})
    changed = make_tar({"d/a.txt": b"changed"})
    server.files["/d.tgz"] = first
    archive = Archive("d", server.url("/d.tgz"), "d.tgz")
    fetch_and_extract(archive, tmp_path, progress=False)
    (tmp_path / "d.tgz").unlink()

    server.files["/d.tgz"] = changed
    with pytest.raises(DownloadError) as info:
        download(archive, tmp_path, progress=False)
    message = str(info.value)
    assert "checksum changed" in message and sha256(first) in message
    assert sha256(changed) in message and RECORD in message
    assert not (tmp_path / "d.tgz").exists()


@pytest.mark.parametrize("how", ["html", "error page as a file", "truncated, no length"])
def test_a_body_that_is_not_the_archive_never_becomes_the_reference(server, tmp_path, how):
    """Without a pinned checksum, what a server sends first is not trusted: a web page is
    refused, and a file that does not extract is removed, so the real archive is accepted
    afterwards instead of being refused as "changed"."""
    real = make_tar({"d/a.bin": payload(50_000)})
    archive = Archive("d", server.url("/d.tgz"), "d.tgz")
    if how == "html":
        server.files["/d.tgz"] = b"<!DOCTYPE html><html>Not Found</html>"
        server.content_type["/d.tgz"] = "text/html; charset=utf-8"
        expected, error = "sent a web page (text/html)", DownloadError
    elif how == "error page as a file":
        server.files["/d.tgz"] = b"<!DOCTYPE html><html>Not Found</html>"
        expected, error = (
            "does not start like a .tar.gz file (it starts with '<!DOCTYPE",
            DownloadError,
        )
    else:
        server.files["/d.tgz"] = real
        server.no_length.add("/d.tgz")
        server.cut("/d.tgz", after=len(real) // 2)
        expected, error = "unverified download was removed", ExtractError

    with pytest.raises(error) as info:
        fetch_and_extract(archive, tmp_path, progress=False)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "d.tgz").exists() and not (tmp_path / "d").exists()

    server.files["/d.tgz"] = real
    server.content_type.pop("/d.tgz", None)
    server.no_length.discard("/d.tgz")
    out = fetch_and_extract(archive, tmp_path, progress=False)
    assert (out / "d" / "a.bin").read_bytes() == payload(50_000)
    entry = json.loads((tmp_path / RECORD).read_text())["d.tgz"]
    assert entry["sha256"] == sha256(real) and entry["confirmed"] is True


def test_a_hand_placed_archive_that_does_not_extract_is_kept(tmp_path):
    """Not sslbench's file: an error, but never deleted."""
    (tmp_path / "d.tgz").write_bytes(make_tar({"d/a.txt": b"a"})[:-40])
    archive = Archive("d", "https://example.invalid/d.tgz", "d.tgz")
    with pytest.raises(ExtractError, match="corrupt or truncated"):
        fetch_and_extract(archive, tmp_path, progress=False)
    assert (tmp_path / "d.tgz").is_file()


def test_hand_placed_file_is_verified_then_recorded(server: FileServer, tmp_path):
    data = payload(8000)
    archive = Archive("d", server.url("/d.tgz"), "d.tgz", sha256=sha256(data))
    (tmp_path / "d.tgz").write_bytes(data)

    assert download(archive, tmp_path, progress=False).read_bytes() == data
    assert server.requests == []
    assert json.loads((tmp_path / RECORD).read_text())["d.tgz"]["sha256"] == sha256(data)

    (tmp_path / "d.tgz").write_bytes(payload(8000, seed=5))  # replaced by other bytes
    with pytest.raises(DownloadError) as info:
        download(archive, tmp_path, progress=False)
    assert str(tmp_path / "d.tgz") in str(info.value) and "sha256 expected" in str(info.value)
    assert (tmp_path / "d.tgz").exists()  # the user's file is left to the user
    assert server.requests == []


@pytest.mark.parametrize("failure", ["refused", "404", "500"])
def test_unreachable_gives_one_line_with_url_and_destination(server, tmp_path, failure):
    if failure == "refused":
        url = f"http://127.0.0.1:{unused_port()}/d.tgz"
    else:
        server.status["/d.tgz"] = int(failure)
        url = server.url("/d.tgz")

    with pytest.raises(DownloadError) as info:
        download(Archive("d", url, "d.tgz"), tmp_path, progress=False, timeout=5)

    message = str(info.value)
    assert "\n" not in message
    assert url in message and str(tmp_path / "d.tgz") in message and "by hand" in message
    if failure != "refused":
        assert f"HTTP {failure}" in message
    assert not (tmp_path / "d.tgz").exists()


def test_second_download_makes_no_request(server: FileServer, tmp_path, monkeypatch):
    data = payload(30_000)
    server.files["/d.tgz"] = data
    archive = Archive("d", server.url("/d.tgz"), "d.tgz", md5=hashlib.md5(data).hexdigest())

    first = download(archive, tmp_path, progress=False)
    # Verified before and unchanged: neither fetched nor hashed again.
    monkeypatch.setattr(Hashes, "update_from", None)
    second = download(archive, tmp_path, progress=False)

    assert first == second and second.read_bytes() == data
    assert len(server.requests) == 1


# --- fetch_and_extract ---------------------------------------------------------------------


def test_fetch_and_extract_twice_is_a_no_op(server: FileServer, tmp_path, monkeypatch):
    server.files["/pkg.tgz"] = make_tar({"pkg/train/a.txt": b"a", "pkg/val/b.txt": b"b"})
    archive = Archive("pkg", server.url("/pkg.tgz"), "pkg.tgz")

    out = fetch_and_extract(archive, tmp_path, progress=False)
    assert out == tmp_path / "pkg"
    assert (out / "pkg/train/a.txt").read_bytes() == b"a"
    before = (out / "pkg/train/a.txt").stat()
    (out / "sentinel").touch()  # would vanish if the folder were extracted again
    monkeypatch.setattr(dl, "extract", None)

    again = fetch_and_extract(archive, tmp_path, progress=False)

    assert again == out and len(server.requests) == 1
    after = (out / "pkg/train/a.txt").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (out / "sentinel").exists()
    assert leftovers(tmp_path) == sorted([RECORD, "pkg", "pkg.tgz"])
    assert MARKER in leftovers(out)
