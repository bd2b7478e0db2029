"""Checksums of downloaded files and the per-folder JSON records that remember them.

:class:`Hashes` follows a file's bytes as they arrive or are read back (sha256, md5 when a
pinned one is to be checked); :func:`not_an_archive` tells from its first bytes that a file is
not of the archive format its name says. What was verified is remembered per folder, so a file
whose size and mtime are unchanged is trusted again without hashing::

    <dest_dir>/.sslbench-checksums.json  filename -> {size, sha256, md5, url, first_downloaded,
                                         mtime_ns, confirmed}, replaced atomically
    <record_dir>/.sslbench-archives.json path of a user's own archive -> {size, mtime_ns, sha256}

What a file must be (an ``Archive``'s pins) and when its record is written:
:mod:`sslbench.data.download`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

__all__ = [
    "ARCHIVES",
    "CHUNK",
    "MAGIC",
    "RECORD",
    "Hashes",
    "not_an_archive",
    "read_record",
    "write_json",
]

CHUNK = 1 << 20  # bytes read and hashed at a time
RECORD = ".sslbench-checksums.json"  # per-folder record of verified files
ARCHIVES = ".sslbench-archives.json"  # SHA-256 of users' own archives, by path


class Hashes:
    """Running sha256 (and md5 when wanted) of the bytes seen so far."""

    def __init__(self, md5: bool):
        self.want_md5 = md5
        self.reset()

    def reset(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if self.want_md5 else None

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self.sha256.update(data)
        if self.md5 is not None:
            self.md5.update(data)

    def update_from(self, path: Path, bar: tqdm | None = None) -> None:
        with open(path, "rb") as f:
            while data := f.read(CHUNK):
                self.update(data)
                if bar is not None:
                    bar.update(len(data))


#: The bytes each archive format starts with (tar: "ustar" at offset 257).
MAGIC = {
    (".tar.gz", ".tgz"): [(0, b"\x1f\x8b")],
    (".tar.bz2", ".tbz2"): [(0, b"BZh")],
    (".tar.xz", ".txz"): [(0, b"\xfd7zXZ\x00")],
    (".zip",): [(0, b"PK\x03\x04"), (0, b"PK\x05\x06")],
    (".tar",): [(257, b"ustar")],
}


def not_an_archive(path: Path, filename: str) -> str | None:
    """Why the file at ``path`` cannot be the archive ``filename`` names (its first bytes
    are not its format's), or None."""
    lower = filename.lower()
    for suffixes, signatures in MAGIC.items():
        if lower.endswith(suffixes):
            with open(path, "rb") as f:
                head = f.read(512)
            if any(head[at : at + len(magic)] == magic for at, magic in signatures):
                return None
            shown = head[:16].decode("latin-1").encode("unicode_escape").decode()
            return f"it does not start like a {suffixes[0]} file (it starts with '{shown}')"
    return None


def read_record(dest_dir: Path, name: str = RECORD) -> dict[str, dict[str, Any]]:
    """The folder's record ``name``: of verified files (:data:`RECORD`) or of users'
    archives (:data:`ARCHIVES`); empty when missing or unreadable."""
    try:
        record = json.loads((dest_dir / name).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, then os.replace)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
