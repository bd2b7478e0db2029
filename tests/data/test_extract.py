"""Tests of sslbench.data.extract: hostile archives write nothing outside their folder."""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import make_tar

from sslbench.data.extract import (
    MARKER,
    ExtractError,
    ExtractLimits,
    archive_stem,
    extract,
    extracted_from,
)


def payload(n: int = 200_000, seed: int = 0) -> bytes:
    """``n`` incompressible bytes."""
    return random.Random(seed).randbytes(n)


def leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buf.getvalue()


def member(name: str, kind: int = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def unsafe_tar(kind: str, outside: Path) -> bytes:
    """A .tgz with an ordinary file, a member of the unsafe ``kind`` and a file after it."""
    if kind in ("dotdot", "absolute"):
        bad = (member("../evil" if kind == "dotdot" else str(outside / "evil")), b"evil")
    else:
        link_kind = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}
        target = {"symlink": "../../outside", "hardlink": "../outside"}.get(kind, "")
        bad = (member("pkg/link", link_kind.get(kind, tarfile.FIFOTYPE), target), None)
    # the file after the link is written through it, were the link made
    return tar_of((member("pkg/ok.txt"), b"ok"), bad, (member("pkg/link/x"), b"x"))


def refused(archive: Path, out: Path) -> str:
    with pytest.raises(ExtractError) as info:
        extract(archive, out, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(archive) in message and "refusing to extract" in message
    return message


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "fifo"])
def test_extract_refuses_unsafe_members(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "bad.tgz"
    archive.write_bytes(unsafe_tar(kind, tmp_path / "abs"))

    message = refused(archive, work / "out")

    name = {"dotdot": "../evil", "absolute": str(tmp_path / "abs" / "evil")}.get(kind, "pkg/link")
    assert repr(name) in message
    assert leftovers(work) == ["bad.tgz"]  # no out/, no out.partial-*
    assert leftovers(tmp_path) == ["work"]  # nothing written next to it either


def test_links_that_stay_inside_are_refused_too(tmp_path):
    """No catalogue archive holds links; one inside today is the first step of a chain."""
    archive = tmp_path / "pkg.tgz"
    archive.write_bytes(make_tar({"pkg/c.txt": b"c"}, links={"pkg/d/link": "../c.txt"}))
    assert "symbolic link" in refused(archive, tmp_path / "out")
    assert leftovers(tmp_path) == ["pkg.tgz"]


@pytest.mark.parametrize("without_data_filter", [False, True])
def test_symlink_chain_writes_nothing_outside(tmp_path, monkeypatch, without_data_filter):
    """The CVE-2025-4517 shape: links that each look inside, resolving outside together,
    then a file written through the last one. Refused whatever Python's tarfile offers."""
    if without_data_filter and hasattr(tarfile, "data_filter"):
        monkeypatch.delattr(tarfile, "data_filter")
    data_dir = tmp_path / "data" / "name"
    data_dir.mkdir(parents=True)
    archive = data_dir / "evil.tar"
    archive.write_bytes(
        tar_of(
            (member("a", tarfile.DIRTYPE), None),
            (member("a/b", tarfile.SYMTYPE, "."), None),
            (member("a/b/up", tarfile.SYMTYPE, "../.."), None),
            (member("a/b/up/up2", tarfile.SYMTYPE, "../.."), None),
            (member("a/b/up/up2/pwned.txt"), b"pwned"),
            mode="w",
        )
    )
    refused(archive, data_dir / "out")
    written = [p for p in tmp_path.rglob("*") if p.name == "pwned.txt"]
    assert written == [] and leftovers(data_dir) == ["evil.tar"]


def test_duplicate_member_and_file_as_folder_are_refused(tmp_path):
    twice = tmp_path / "twice.tgz"
    twice.write_bytes(tar_of((member("pkg/a"), b"1"), (member("pkg/a"), b"2")))
    assert "appears twice" in refused(twice, tmp_path / "out")

    file_then_dir = tmp_path / "clash.tgz"
    file_then_dir.write_bytes(tar_of((member("pkg/a"), b"1"), (member("pkg/a/b"), b"2")))
    assert "which is a file" in refused(file_then_dir, tmp_path / "out")
    assert leftovers(tmp_path) == ["clash.tgz", "twice.tgz"]


def test_modes_are_sslbench_own(tmp_path):
    """No set-uid or executable bits from an archive; folders readable and writable."""
    info = member("pkg/tool")
    info.mode = 0o4777
    folder = member("pkg", tarfile.DIRTYPE)
    folder.mode = 0o000
    archive = tmp_path / "pkg.tgz"
    archive.write_bytes(tar_of((folder, None), (info, b"#!/bin/sh\n")))

    out = extract(archive, tmp_path / "out", progress=False)

    assert stat.S_IMODE((out / "pkg" / "tool").stat().st_mode) == 0o644 & ~_umask()
    assert stat.S_IMODE((out / "pkg").stat().st_mode) == 0o755 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_limits_stop_a_bomb(tmp_path, monkeypatch):
    archive = tmp_path / "bomb.tgz"
    archive.write_bytes(make_tar({f"pkg/{i}.bin": bytes(4096) for i in range(5)}))

    message = refused_with(archive, tmp_path / "out", ExtractLimits(max_bytes=10_000))
    assert "'pkg/2.bin'" in message and "SSLBENCH_EXTRACT_MAX_GB" in message
    message = refused_with(archive, tmp_path / "out", ExtractLimits(max_members=3))
    assert "'pkg/3.bin'" in message and "SSLBENCH_EXTRACT_MAX_MEMBERS" in message
    assert leftovers(tmp_path) == ["bomb.tgz"]

    monkeypatch.setenv("SSLBENCH_EXTRACT_MAX_MEMBERS", "4")
    assert "3 members" not in refused(archive, tmp_path / "out")  # the environment's 4
    monkeypatch.setenv("SSLBENCH_EXTRACT_MAX_MEMBERS", "many")
    with pytest.raises(ExtractError, match="SSLBENCH_EXTRACT_MAX_MEMBERS='many'"):
        extract(archive, tmp_path / "out", progress=False)
    monkeypatch.setenv("SSLBENCH_EXTRACT_MAX_MEMBERS", "5")
    assert len(os.listdir(extract(archive, tmp_path / "out", progress=False) / "pkg")) == 5


def refused_with(archive: Path, out: Path, limits: ExtractLimits) -> str:
    with pytest.raises(ExtractError) as info:
        extract(archive, out, progress=False, limits=limits)
    return str(info.value)


@pytest.mark.parametrize("suffix,mode", [("tar", "w"), ("tgz", "w:gz"), ("tar.bz2", "w:bz2"),
                                         ("tar.xz", "w:xz")])  # fmt: skip
def test_extract_nested_tar(tmp_path, suffix, mode):
    files = {"pkg/a.txt": b"a", "pkg/b/c.txt": b"c" * 1000, "pkg/b/d/e.txt": b"e"}
    archive = tmp_path / f"pkg.{suffix}"
    archive.write_bytes(make_tar(files, mode))

    out = extract(archive, tmp_path / "out", progress=True)

    assert out == tmp_path / "out"
    for name, content in files.items():
        assert (out / name).read_bytes() == content
    assert leftovers(tmp_path) == sorted([archive.name, "out"])
    assert leftovers(out) == [MARKER, "pkg"]


def test_extract_replaces_an_earlier_extraction_only(tmp_path):
    old, new = tmp_path / "old.tgz", tmp_path / "new.tgz"
    old.write_bytes(make_tar({"old.txt": b"old"}))
    new.write_bytes(make_tar({"new.txt": b"new"}))
    extract(old, tmp_path / "out", progress=False, sha256="abc")
    assert extracted_from(tmp_path / "out")["sha256"] == "abc"

    extract(new, tmp_path / "out", progress=False)  # an earlier extraction: replaced
    assert leftovers(tmp_path / "out") == [MARKER, "new.txt"]
    assert extracted_from(tmp_path / "out")["archive"] == "new.tgz"

    mine = tmp_path / "mine"  # not made by sslbench: never replaced
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ExtractError, match="not made by sslbench"):
        extract(new, mine, progress=False)
    assert leftovers(mine) == ["notes.txt"]
    assert leftovers(tmp_path) == ["mine", "new.tgz", "old.tgz", "out"]


def test_extract_zip(tmp_path):
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/a.txt", b"a")
        zf.writestr("pkg/b/c.txt", b"c")

    out = extract(archive, tmp_path / "out", progress=False)

    assert (out / "pkg/a.txt").read_bytes() == b"a" and (out / "pkg/b/c.txt").read_bytes() == b"c"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "pkg/../../evil.txt", "link"])
def test_extract_zip_refuses_paths_outside_and_links(tmp_path, name):
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/ok.txt", b"ok")
        info = zipfile.ZipInfo(name)
        if name == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"../../evil" if name == "link" else b"evil")

    refused(archive, work / "out")

    assert leftovers(work) == ["bad.zip"] and leftovers(tmp_path) == ["work"]


@pytest.mark.parametrize("keep", ["half", "all but the trailer"])
def test_extract_truncated_archive(tmp_path, keep):
    data = make_tar({"pkg/a.bin": payload(50_000), "pkg/b.bin": payload(50_000, seed=1)})
    archive = tmp_path / "pkg.tgz"
    archive.write_bytes(data[: len(data) // 2] if keep == "half" else data[:-5])

    with pytest.raises(ExtractError) as info:
        extract(archive, tmp_path / "out", progress=False)

    message = str(info.value)
    assert str(archive) in message and "download it again" in message and "\n" not in message
    assert leftovers(tmp_path) == ["pkg.tgz"]


def test_extract_truncated_zip(tmp_path):
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.bin", payload(20_000))
    archive.write_bytes(archive.read_bytes()[:-30])

    with pytest.raises(ExtractError, match="download it again"):
        extract(archive, tmp_path / "out", progress=False)
    assert leftovers(tmp_path) == ["pkg.zip"]


def test_archive_stem():
    assert archive_stem("imagenette2-160.tgz") == "imagenette2-160"
    assert archive_stem("NABirds.TAR.GZ") == "NABirds"
    assert archive_stem("notes.txt") == "notes.txt.d"
