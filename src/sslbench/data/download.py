"""Download dataset archives (resumable, verified); unpack them with :mod:`.extract`.

:func:`download` fetches one :class:`Archive` into a folder with ``urllib`` only::

    <dest_dir>/<filename>.part           bytes received so far; a later call resumes it (Range)
    <dest_dir>/<filename>                only ever appears complete and verified
    <dest_dir>/.sslbench-checksums.json  filename -> {size, sha256, md5, url, first_downloaded,
                                         mtime_ns}, replaced atomically

Each finished file is checked against the size, sha256 and md5 the :class:`Archive` pins, and
its sha256 is recorded. A file is trusted again without hashing while its size and mtime match
the record; a file put there by hand is verified once, then recorded. Without a pinned sha256,
the first recorded one is the reference: a later copy with other bytes (an upstream file that
changed) is refused. Concurrent processes fetching the same dataset are serialised by a lock in
:func:`sslbench.data.catalog.locate`; calling :func:`download` directly from several at once is
not supported.

:func:`fetch_and_extract` downloads, then unpacks with :func:`sslbench.data.extract.extract`
(which treats every archive as hostile), once: a marker written last makes later calls no-ops.

Where archives come from: ``dataset.url=...`` (the ``url`` argument) wins; else
``$SSLBENCH_MIRROR`` (a URL or folder serving the archives under their file names); else the
archive's canonical URL.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import posixpath
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from sslbench.host import no_space

from .. import __version__
from ..errors import DownloadError, ExtractError, one_line
from .extract import archive_stem, extract, extracted_from

__all__ = [
    "Archive",
    "archive_sha256",
    "DownloadError",
    "ExtractError",
    "data_root",
    "download",
    "extract",
    "fetch_and_extract",
    "resolve_url",
]

CHUNK = 1 << 20  # bytes read and hashed at a time
RECORD = ".sslbench-checksums.json"  # per-folder record of verified files
ARCHIVES = ".sslbench-archives.json"  # SHA-256 of users' own archives, by path
USER_AGENT = f"sslbench/{__version__} (+python-urllib)"


@dataclass(frozen=True)
class Archive:
    """One downloadable file and what is known about its content."""

    name: str  # dataset name, e.g. "imagenette2-160" (for messages)
    url: str  # canonical URL
    filename: str  # file name on disk, e.g. "imagenette2-160.tgz"
    size: int | None = None  # bytes, when known
    sha256: str | None = None  # when known
    md5: str | None = None  # a published md5 (CIFAR, STL-10) when that is what is known


def data_root() -> Path:
    """``$SSLBENCH_DATA``, else ``~/.cache/sslbench/data``."""
    return Path(os.environ.get("SSLBENCH_DATA") or "~/.cache/sslbench/data").expanduser()


def resolve_url(url: str, override: str | None = None) -> str:
    """The URL to fetch ``url`` from.

    ``override`` (``dataset.url=...``) wins; else, when ``$SSLBENCH_MIRROR`` is set (a URL such
    as ``http://127.0.0.1:8000/mirror``, a ``file://`` folder URL or a plain local folder), the
    file name (last path component of ``url``) is fetched from there:
    ``mirror.rstrip('/') + '/' + basename(url)``; else ``url`` itself.
    """
    if override:
        return override
    mirror = os.environ.get("SSLBENCH_MIRROR", "").strip()
    if not mirror:
        return url
    if not urlsplit(mirror).scheme:  # a local folder: serve it as file://
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + posixpath.basename(urlsplit(url).path)


def download(
    archive: Archive,
    dest_dir: Path,
    *,
    url: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return ``dest_dir / archive.filename``, downloading and verifying it first if needed.

    ``url`` overrides where the file is fetched from (see :func:`resolve_url`); ``timeout`` is
    in seconds, per network operation. Raises :class:`DownloadError` (one line) when the file
    cannot be fetched (the partial download is kept and resumed next time) or does not match
    what is known of it (nothing is kept).
    """
    return _download(archive, Path(dest_dir), url, progress, timeout)[0]


def fetch_and_extract(
    archive: Archive, root: Path, *, url: str | None = None, progress: bool = True
) -> Path:
    """:func:`download` ``archive`` into ``root``, then :func:`extract` it into
    ``root / <archive stem>`` (the file name without its archive suffix) and return that folder.

    The folder's marker (:func:`sslbench.data.extract.extracted_from`) records the archive's
    sha256; while it matches, later calls neither touch the network nor extract again.
    """
    root = Path(root)
    path, sha256 = _download(archive, root, url, progress, 60.0)
    dest = root / archive_stem(archive.filename)
    if (extracted_from(dest) or {}).get("sha256") != sha256:
        try:
            extract(path, dest, progress=progress, sha256=sha256)
        except ExtractError as err:
            raise _unusable_download(archive, root, path, err) from None
        _confirm(root, archive.filename, sha256)
    return dest


def archive_sha256(path: Path, record_dir: Path, *, progress: bool = True) -> str:
    """The SHA-256 of a user's archive at ``path``, hashed once: remembered in
    ``record_dir/.sslbench-archives.json`` with its size and mtime, so it is read again only
    if the file changes."""
    path = Path(path).resolve()
    record = _read_record(Path(record_dir), ARCHIVES)
    stat = path.stat()
    entry = record.get(str(path))
    if isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == (
        stat.st_size, stat.st_mtime_ns,
    ):  # fmt: skip
        return str(entry["sha256"])
    hashes = _Hashes(md5=False)
    with tqdm(total=stat.st_size, desc=f"checksum of {path.name}", unit="B", unit_scale=True,
              unit_divisor=1024, disable=not progress) as bar:  # fmt: skip
        hashes.update_from(path, bar)
    sha256 = hashes.sha256.hexdigest()
    record[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    Path(record_dir).mkdir(parents=True, exist_ok=True)
    _write_json(Path(record_dir) / ARCHIVES, record)
    return sha256


def _unusable_download(archive: Archive, root: Path, path: Path, err: ExtractError) -> Exception:
    """An archive that does not extract. Where sslbench downloaded it and nothing pinned its
    checksum, the file is removed with its record, so the next run fetches it again instead of
    taking its SHA-256 as the reference; a file put there by hand is left alone."""
    record = _read_record(root)
    entry = record.get(archive.filename) or {}
    if entry.get("url") and not entry.get("confirmed", True):
        path.unlink(missing_ok=True)
        del record[archive.filename]
        _write_json(root / RECORD, record)
        return ExtractError(f"{err} (the unverified download was removed: run again to fetch it)")
    return err


def _confirm(root: Path, filename: str, sha256: str) -> None:
    """Mark a recorded file confirmed: it extracted, so its SHA-256 is now the reference."""
    record = _read_record(root)
    entry = record.get(filename)
    if entry is not None and entry.get("sha256") == sha256 and not entry.get("confirmed", True):
        entry["confirmed"] = True
        _write_json(root / RECORD, record)


# --- downloading ---------------------------------------------------------------------------


class _Hashes:
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


class _NetworkError(Exception):
    """Fetching failed for a reason on the network's side; ``str`` is the reason."""


class _RangeNotSatisfiable(Exception):
    """The server answered 416 to a resumed download that is not already complete."""


def _download(
    archive: Archive, dest_dir: Path, override: str | None, progress: bool, timeout: float
) -> tuple[Path, str]:
    """:func:`download`, also returning the file's sha256."""
    source = resolve_url(archive.url, override)
    final = dest_dir / archive.filename
    dest_dir.mkdir(parents=True, exist_ok=True)
    entry = _read_record(dest_dir).get(archive.filename)
    if final.is_file():
        return final, _verify_existing(archive, final, entry, source, progress)

    part = final.with_name(final.name + ".part")
    hashes = _Hashes(md5=archive.md5 is not None)
    try:
        _fetch(archive, source, part, hashes, progress, timeout)
    except _NetworkError as err:
        raise DownloadError(
            f"cannot download {archive.name} from {source}: {err}; download it by hand and put "
            f"it at {final} (or set SSLBENCH_MIRROR / dataset.url)"
        ) from None
    problem = _mismatch(archive, hashes, entry) or _not_an_archive(part, archive.filename)
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{archive.name} from {source} is not the expected file: {problem}; nothing was "
            f"kept (check the URL, or put a correct copy at {final})"
        )
    os.replace(part, final)
    sha256 = hashes.sha256.hexdigest()
    _record(dest_dir, archive, final, hashes, source, entry)
    return final, sha256


def _verify_existing(
    archive: Archive, final: Path, entry: dict[str, Any] | None, source: str, progress: bool
) -> str:
    """The sha256 of the file already at ``final``, verifying (and recording) it if needed."""
    stat = final.stat()
    if (
        entry is not None
        and entry.get("sha256")
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and archive.size in (None, stat.st_size)
        and archive.sha256 in (None, entry.get("sha256"))
        and archive.md5 in (None, entry.get("md5"))
    ):
        return str(entry["sha256"])  # verified before and unchanged since

    hashes = _Hashes(md5=archive.md5 is not None)
    bar = tqdm(
        total=stat.st_size,
        desc=f"verifying {final.name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
    )
    with bar:
        hashes.update_from(final, bar)
    problem = _mismatch(archive, hashes, entry) or _not_an_archive(final, archive.filename)
    if problem:
        raise DownloadError(
            f"{final} is not the expected {archive.name} file: {problem}; delete it and run "
            f"again to download it from {source}"
        )
    _record(final.parent, archive, final, hashes, entry.get("url") if entry else None, entry)
    return hashes.sha256.hexdigest()


def _fetch(
    archive: Archive, source: str, part: Path, hashes: _Hashes, progress: bool, timeout: float
) -> None:
    """Complete ``part`` from ``source``, resuming what it holds; ``hashes`` covers all of it.

    Raises :class:`_NetworkError` on any network failure, keeping what was received.
    """
    offset = part.stat().st_size if part.is_file() else 0
    if archive.size is not None and offset > archive.size:
        part.unlink()  # longer than the whole file: cannot be a prefix of it
        offset = 0
    if offset:
        hashes.update_from(part)
        if archive.size is not None and offset == archive.size:
            return  # already complete; verified by the caller

    try:
        response = _open(source, offset, timeout)
    except _RangeNotSatisfiable:  # cannot be a prefix of the server's file: start again
        part.unlink()
        hashes.reset()
        offset = 0
        response = _open(source, 0, timeout)
    if response is None:  # 416: the part already holds the whole file
        return
    _refuse_html(response)
    start, total = _content_range(response, offset)
    if start != offset:  # 200 (Range ignored) or an unexpected 206: start again from zero
        hashes.reset()
        offset = 0
        if start != 0:
            response.close()
            response = _open(source, 0, timeout)
            assert response is not None  # a request without Range never gets None (416)
            _refuse_html(response)
            start, total = _content_range(response, 0)
    with response:
        bar = tqdm(
            total=total,
            initial=offset,
            desc=archive.name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
        )
        with bar, open(part, "ab" if offset else "wb") as out:
            while True:
                try:
                    data = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise _NetworkError(_reason(err)) from None
                if not data:
                    break
                try:
                    out.write(data)
                except OSError as err:  # the part is kept: the next call resumes it
                    if err.errno == errno.ENOSPC:
                        raise no_space(part, total) from None
                    raise
                hashes.update(data)
                bar.update(len(data))
    if total is not None and hashes.size < total:
        raise _NetworkError(f"connection closed after {hashes.size} of {total} bytes")


def _open(source: str, offset: int, timeout: float) -> Any | None:
    """The response to a GET of ``source`` from byte ``offset`` on; None for a 416 at EOF."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(source, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and offset:
            unit_total = (err.headers.get("Content-Range") or "").rpartition("/")[2]
            err.close()
            if unit_total.strip() == str(offset):
                return None
            raise _RangeNotSatisfiable from None  # the part is longer than the server's file
        err.close()
        raise _NetworkError(f"HTTP {err.code} {err.reason}") from None
    except ValueError as err:  # malformed URL
        raise _NetworkError(one_line(err)) from None
    except (OSError, http.client.HTTPException) as err:
        raise _NetworkError(_reason(err)) from None


def _refuse_html(response: Any) -> None:
    """An HTML page (a login wall, a 200 "not found" page) is never the archive."""
    kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        response.close()
        raise _NetworkError(f"the server sent a web page ({kind}), not the archive")


#: The bytes each archive format starts with (tar: "ustar" at offset 257).
MAGIC = {
    (".tar.gz", ".tgz"): [(0, b"\x1f\x8b")],
    (".tar.bz2", ".tbz2"): [(0, b"BZh")],
    (".tar.xz", ".txz"): [(0, b"\xfd7zXZ\x00")],
    (".zip",): [(0, b"PK\x03\x04"), (0, b"PK\x05\x06")],
    (".tar",): [(257, b"ustar")],
}


def _not_an_archive(path: Path, filename: str) -> str | None:
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


def _content_range(response: Any, offset: int) -> tuple[int, int | None]:
    """(first byte, total bytes or None) of what ``response`` sends."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.strip().isdigit() else None
    status = getattr(response, "status", None)
    if status == 206:
        spec = (response.headers.get("Content-Range") or "").strip()
        # "bytes START-END/TOTAL" (TOTAL may be "*")
        try:
            unit, _, rest = spec.partition(" ")
            span, _, total_text = rest.partition("/")
            start = int(span.partition("-")[0])
            total = int(total_text) if total_text.strip().isdigit() else None
        except ValueError:
            return -1, None  # unintelligible: start again
        if unit != "bytes":
            return -1, None
        if total is None and length is not None:
            total = start + length
        return start, total
    return 0, length  # 200 (or a file:// URL): the whole file


def _mismatch(archive: Archive, hashes: _Hashes, entry: dict[str, Any] | None) -> str | None:
    """Why the bytes behind ``hashes`` are not ``archive``'s, or None when they match."""
    sha256 = hashes.sha256.hexdigest()
    if archive.size is not None and hashes.size != archive.size:
        return f"size expected {archive.size} bytes, got {hashes.size}"
    if archive.sha256 is not None and sha256 != archive.sha256.lower():
        return f"sha256 expected {archive.sha256.lower()}, got {sha256}"
    if archive.md5 is not None and hashes.md5 is not None:
        md5 = hashes.md5.hexdigest()
        if md5 != archive.md5.lower():
            return f"md5 expected {archive.md5.lower()}, got {md5}"
    reference = entry is not None and entry.get("confirmed", True)  # unconfirmed: not yet
    if archive.sha256 is None and reference and entry.get("sha256") not in (None, sha256):
        return (
            f"checksum changed since first download: recorded {entry['sha256']}, got {sha256} "
            f"(if the new file is right, remove its entry from {RECORD})"
        )
    return None


def _read_record(dest_dir: Path, name: str = RECORD) -> dict[str, dict[str, Any]]:
    """The folder's record ``name``: of verified files (:data:`RECORD`) or of users'
    archives (:data:`ARCHIVES`); empty when missing or unreadable."""
    try:
        record = json.loads((dest_dir / name).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _record(
    dest_dir: Path,
    archive: Archive,
    final: Path,
    hashes: _Hashes,
    url: str | None,
    entry: dict[str, Any] | None,
) -> None:
    """Record ``final`` as verified, keeping the date it was first recorded."""
    record = _read_record(dest_dir)
    stat = final.stat()
    sha256 = hashes.sha256.hexdigest()
    pinned = archive.sha256 is not None or archive.md5 is not None
    earlier = entry is not None and entry.get("confirmed", True) and entry.get("sha256") == sha256
    record[archive.filename] = {
        # a SHA-256 becomes the reference only once the file is known good: pinned, or
        # extracted (fetch_and_extract confirms it); until then a different copy may replace it
        "confirmed": pinned or earlier,
        "size": stat.st_size,
        "sha256": sha256,
        "md5": hashes.md5.hexdigest() if hashes.md5 is not None else (entry or {}).get("md5"),
        "url": url,
        "first_downloaded": (entry or {}).get("first_downloaded")
        or datetime.now(timezone.utc).isoformat(),
        "mtime_ns": stat.st_mtime_ns,
    }
    _write_json(dest_dir / RECORD, record)


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, then os.replace)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _reason(err: BaseException) -> str:
    """One-line reason of a network failure."""
    if isinstance(err, URLError) and not isinstance(err, HTTPError):
        reason = err.reason
        if isinstance(reason, TimeoutError):
            return "timed out"
        return one_line(reason)
    if isinstance(err, TimeoutError):
        return "timed out"
    return one_line(err)
