"""Unpack a dataset archive into one folder, and nothing anywhere else.

Archives come from servers, mirrors and users' disks (``dataset.path=ARCHIVE``): each is
treated as hostile. This module is where the data folder's safety lives, so it depends on no
version of Python's own ``tarfile`` filters (which had bypasses, CVE-2025-4517, and are absent
before 3.10.12) and writes every file itself:

- member names are relative, without ``..``, drive letters or NUL bytes;
- members are regular files and folders only: symbolic links, hard links, devices and fifos
  are refused outright (no catalogue archive holds one, and a link is how an archive gets
  past checks on names: a link member, then a file written through it);
- every folder is created here (``os.mkdir``) and every file is opened with ``O_CREAT |
  O_EXCL | O_NOFOLLOW`` in a folder that this extraction created and that resolves, links
  followed, to where it should: nothing that was already there is followed or overwritten;
- files get mode 0644, folders 0755 (no set-uid bits, no executables from an archive);
- the bytes written and the number of members are capped (generous defaults, raised with
  ``$SSLBENCH_EXTRACT_MAX_GB`` and ``$SSLBENCH_EXTRACT_MAX_MEMBERS``), so a compression bomb
  stops with a message instead of filling the disk;
- everything is written into a ``.partial-<pid>-<rand>`` sibling renamed into place only
  when complete, with a marker file (:data:`MARKER`) saying which archive it came from; a
  refused or corrupt archive leaves nothing behind;
- an existing destination is replaced only when it is an earlier extraction (it holds the
  marker) or empty: a folder sslbench did not make is never deleted.
"""

from __future__ import annotations

import errno
import json
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from sslbench.errors import ExtractError, one_line
from sslbench.host import no_space

from .folders import partial_dir, publish, remove_stale

__all__ = ["MARKER", "SUFFIXES", "ExtractLimits", "archive_stem", "extract",
           "extracted_from"]  # fmt: skip

#: Archive suffixes, longest first: the name without one is the extraction folder's name.
SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")
CHUNK = 1 << 20  # bytes copied at a time
MARKER = ".sslbench-extracted.json"  # written into every folder extract() made
FILE_MODE, DIR_MODE = 0o644, 0o755


@dataclass(frozen=True)
class ExtractLimits:
    """The most an archive may unpack to. The defaults are far above any catalogue dataset
    (NABirds, the largest, unpacks to about 9 GB and 50,000 files)."""

    max_bytes: int = 200 * 1024**3
    max_members: int = 5_000_000

    @classmethod
    def from_env(cls) -> ExtractLimits:
        """The defaults, or ``$SSLBENCH_EXTRACT_MAX_GB`` / ``$SSLBENCH_EXTRACT_MAX_MEMBERS``."""
        limits = cls()
        gb = _env_number("SSLBENCH_EXTRACT_MAX_GB")
        members = _env_number("SSLBENCH_EXTRACT_MAX_MEMBERS")
        return cls(
            max_bytes=int(gb * 1024**3) if gb is not None else limits.max_bytes,
            max_members=int(members) if members is not None else limits.max_members,
        )


def _env_number(key: str) -> float | None:
    value = os.environ.get(key, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number <= 0:
        raise ExtractError(f"{key}={value!r} is not a positive number")
    return number


def archive_stem(filename: str) -> str:
    """``filename`` without its archive suffix (``imagenette2-160.tgz`` -> ``imagenette2-160``)."""
    lower = filename.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return filename + ".d"


def extracted_from(folder: Path) -> dict[str, str] | None:
    """What :func:`extract` wrote into ``folder`` (archive name, sha256 when known, date), or
    None when ``folder`` is not an extraction of sslbench's."""
    try:
        info = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def extract(
    archive_path: Path,
    dest: Path,
    *,
    progress: bool = True,
    limits: ExtractLimits | None = None,
    sha256: str | None = None,
) -> Path:
    """Unpack ``archive_path`` (.tar, .tgz, .tar.gz, .tar.bz2, .tar.xz, .zip) into the folder
    ``dest`` and return ``dest``.

    An archive holding ``NAME/...`` gives ``dest/NAME/...``. Members are written into a
    sibling ``dest.partial-<pid>-<rand>`` renamed to ``dest`` once everything is there; an
    existing ``dest`` is then replaced if it is an earlier extraction or empty. The marker
    records the archive's name and ``sha256`` (when the caller knows it). A refused member
    (see the module's docstring), a limit passed or a corrupt archive raises
    :class:`ExtractError` and leaves nothing behind.
    """
    archive_path, dest = Path(archive_path), Path(dest)
    name = archive_path.name.lower()
    if not name.endswith(SUFFIXES):
        raise ExtractError(
            f"cannot extract {archive_path}: unsupported archive type "
            f"(supported: {', '.join(SUFFIXES)})"
        )
    if not archive_path.is_file():
        raise ExtractError(f"cannot extract {archive_path}: no such file")
    limits = limits or ExtractLimits.from_env()
    if dest.is_symlink() or dest.exists() and not _replaceable(dest):
        raise ExtractError(
            f"cannot extract {archive_path} into {dest}: that folder was not made by sslbench "
            f"(it has no {MARKER}) and is left alone; move it away or extract elsewhere"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest)
    partial = partial_dir(dest)
    partial.mkdir()
    try:
        writer = _Writer(partial, limits)
        members = _zip_members if name.endswith(".zip") else _tar_members
        for member_name, kind, content in members(archive_path, progress):
            writer.add(member_name, kind, content)
        marker = {"archive": archive_path.name, "sha256": sha256,
                  "extracted": datetime.now(timezone.utc).isoformat()}  # fmt: skip
        (partial / MARKER).write_text(json.dumps(marker, indent=1))
        publish(partial, dest)
    except _Refused as err:
        raise ExtractError(f"refusing to extract {archive_path}: {err}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as err:
        raise ExtractError(_corrupt(archive_path, err)) from None
    except OSError as err:
        if err.errno is None:  # bz2/gzip data errors: the archive, not the disk
            raise ExtractError(_corrupt(archive_path, err)) from None
        if err.errno == errno.ENOSPC:
            raise ExtractError(f"cannot extract {archive_path}: {no_space(dest)}") from None
        raise ExtractError(f"cannot extract {archive_path} into {dest}: {one_line(err)}") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # no-op after a successful publish
    return dest


def _replaceable(dest: Path) -> bool:
    """Whether ``dest`` may be replaced: an earlier extraction of sslbench's, or empty."""
    return dest.is_dir() and (extracted_from(dest) is not None or not any(dest.iterdir()))


# --- reading the two formats: (name, "file" | "dir", readable or None) per member ------------

FILE, DIR = "file", "dir"
Member = tuple[str, str, IO[bytes] | None]


def _tar_members(archive_path: Path, progress: bool) -> Iterator[Member]:
    with open(archive_path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
        with _bar(archive_path, progress) as bar:
            for member in tar:  # lazily: one pass over the (compressed) stream
                if member.isdir():
                    yield member.name, DIR, None
                elif member.isfile():
                    yield member.name, FILE, tar.extractfile(member)
                else:
                    raise _Refused(member.name, _tar_kind(member))
                bar.update(raw.tell() - bar.n)
            # Read to the end, so a truncated or damaged compressed stream shows (gzip's CRC).
            while tar.fileobj.read(CHUNK):
                pass
            bar.update(bar.total - bar.n)


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r}); archives may not hold links"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r}); archives may not hold links"
    if member.ischr() or member.isblk() or member.isfifo():
        return "is a device file or fifo"
    return "is of an unsupported type"


def _zip_members(archive_path: Path, progress: bool) -> Iterator[Member]:
    with zipfile.ZipFile(archive_path) as archive:
        infos = archive.infolist()
        for info in tqdm(
            infos, desc=f"extracting {archive_path.name}", unit="file", disable=not progress
        ):
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _Refused(info.filename, "is a symbolic link; archives may not hold links")
            if info.is_dir():
                yield info.filename, DIR, None
            elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # no type bits: a file
                raise _Refused(info.filename, "is of an unsupported type")
            else:
                with archive.open(info) as content:
                    yield info.filename, FILE, content


def _bar(archive_path: Path, progress: bool) -> tqdm:
    return tqdm(
        total=archive_path.stat().st_size,
        desc=f"extracting {archive_path.name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
    )


# --- writing ---------------------------------------------------------------------------------


class _Refused(Exception):
    """A member that must not be extracted, or a limit passed."""

    def __init__(self, member: str, reason: str):
        super().__init__(f"member {member!r} {reason}")


class _Writer:
    """Writes members under ``root``, creating every folder itself."""

    def __init__(self, root: Path, limits: ExtractLimits):
        self.root = os.path.realpath(root)
        self.limits = limits
        self.created: set[str] = {""}  # folders made by this extraction, relative; "" = root
        self.members = 0
        self.bytes = 0

    def add(self, name: str, kind: str, content: IO[bytes] | None) -> None:
        relative = _safe_name(name)
        self.members += 1
        if self.members > self.limits.max_members:
            raise _Refused(
                name, f"is past the limit of {self.limits.max_members:,} members "
                "($SSLBENCH_EXTRACT_MAX_MEMBERS raises it for a genuine archive)",
            )  # fmt: skip
        if kind == DIR:
            self._folder(relative, name)
            return
        if not relative:
            raise _Refused(name, "is a file without a name")
        folder = self._folder(posixpath.dirname(relative), name)
        target = os.path.join(folder, posixpath.basename(relative))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags, FILE_MODE)
        except FileExistsError:
            raise _Refused(name, "appears twice in the archive") from None
        assert content is not None
        with os.fdopen(fd, "wb") as out:
            while chunk := content.read(CHUNK):
                self.bytes += len(chunk)
                if self.bytes > self.limits.max_bytes:
                    raise _Refused(
                        name, f"takes the archive past {self.limits.max_bytes / 1024**3:g} GB "
                        "unpacked ($SSLBENCH_EXTRACT_MAX_GB raises the limit for a genuine "
                        "archive)",
                    )  # fmt: skip
                out.write(chunk)

    def _folder(self, relative: str, name: str) -> str:
        """The absolute path of folder ``relative``, made (with its parents) if new; each
        must be a real folder made by this extraction, resolving to where it should."""
        parts = [p for p in relative.split("/") if p]
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            path = os.path.join(self.root, *parts[:depth])
            if sub not in self.created:
                try:
                    os.mkdir(path, DIR_MODE)
                except FileExistsError:
                    raise _Refused(name, f"needs folder {sub!r}, which is a file") from None
                self.created.add(sub)
            if not stat.S_ISDIR(os.lstat(path).st_mode) or os.path.realpath(path) != path:
                raise _Refused(name, f"would be written through {sub!r}, not a real folder")
        return os.path.join(self.root, *parts)


def _safe_name(name: str) -> str:
    """``name`` as a normalised relative POSIX path, or :class:`_Refused`."""
    posix = name.replace("\\", "/")
    if "\0" in posix:
        raise _Refused(name, "has a NUL byte in its name")
    if posix.startswith("/") or (len(posix) > 1 and posix[0].isalpha() and posix[1] == ":"):
        raise _Refused(name, "has an absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(name, "has a '..' component")
    return "/".join(parts)


def _corrupt(archive_path: Path, err: BaseException) -> str:
    return (
        f"cannot extract {archive_path}: the archive is corrupt or truncated ({one_line(err)}); "
        f"delete it and download it again"
    )
