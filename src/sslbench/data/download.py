"""Download dataset archives (resumable, verified); unpack them with :mod:`.extract`.

:func:`download` fetches one :class:`Archive` into a folder with ``urllib`` only::

    <dest_dir>/<filename>.part           bytes received so far; a later call resumes it (Range,
                                         :func:`sslbench.data.fetch.fetch`)
    <dest_dir>/<filename>                only ever appears complete and verified
    <dest_dir>/.sslbench-checksums.json  filename -> {size, sha256, md5, url, first_downloaded,
                                         mtime_ns}, replaced atomically
                                         (:mod:`sslbench.data.checksums`)

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

import os
import posixpath
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from ..errors import DownloadError, ExtractError
from .checksums import ARCHIVES, RECORD, Hashes, not_an_archive, read_record, write_json
from .extract import archive_stem, extract, extracted_from
from .fetch import NetworkError, fetch

__all__ = [
    "Archive",
    "archive_sha256",
    "data_root",
    "download",
    "extract",
    "fetch_and_extract",
    "resolve_url",
]


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
    record = read_record(Path(record_dir), ARCHIVES)
    stat = path.stat()
    entry = record.get(str(path))
    if isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == (
        stat.st_size, stat.st_mtime_ns,
    ):  # fmt: skip
        return str(entry["sha256"])
    hashes = Hashes(md5=False)
    with tqdm(total=stat.st_size, desc=f"checksum of {path.name}", unit="B", unit_scale=True,
              unit_divisor=1024, disable=not progress) as bar:  # fmt: skip
        hashes.update_from(path, bar)
    sha256 = hashes.sha256.hexdigest()
    record[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    Path(record_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(record_dir) / ARCHIVES, record)
    return sha256


def _unusable_download(archive: Archive, root: Path, path: Path, err: ExtractError) -> Exception:
    """An archive that does not extract. Where sslbench downloaded it and nothing pinned its
    checksum, the file is removed with its record, so the next run fetches it again instead of
    taking its SHA-256 as the reference; a file put there by hand is left alone."""
    record = read_record(root)
    entry = record.get(archive.filename) or {}
    if entry.get("url") and not entry.get("confirmed", True):
        path.unlink(missing_ok=True)
        del record[archive.filename]
        write_json(root / RECORD, record)
        return ExtractError(f"{err} (the unverified download was removed: run again to fetch it)")
    return err


def _confirm(root: Path, filename: str, sha256: str) -> None:
    """Mark a recorded file confirmed: it extracted, so its SHA-256 is now the reference."""
    record = read_record(root)
    entry = record.get(filename)
    if entry is not None and entry.get("sha256") == sha256 and not entry.get("confirmed", True):
        entry["confirmed"] = True
        write_json(root / RECORD, record)


def _download(
    archive: Archive, dest_dir: Path, override: str | None, progress: bool, timeout: float
) -> tuple[Path, str]:
    """:func:`download`, also returning the file's sha256."""
    source = resolve_url(archive.url, override)
    final = dest_dir / archive.filename
    dest_dir.mkdir(parents=True, exist_ok=True)
    entry = read_record(dest_dir).get(archive.filename)
    if final.is_file():
        return final, _verify_existing(archive, final, entry, source, progress)

    part = final.with_name(final.name + ".part")
    hashes = Hashes(md5=archive.md5 is not None)
    try:
        fetch(source, part, hashes, archive.size, archive.name, progress, timeout)
    except NetworkError as err:
        raise DownloadError(
            f"cannot download {archive.name} from {source}: {err}; download it by hand and put "
            f"it at {final} (or set SSLBENCH_MIRROR / dataset.url)"
        ) from None
    problem = _mismatch(archive, hashes, entry) or not_an_archive(part, archive.filename)
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

    hashes = Hashes(md5=archive.md5 is not None)
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
    problem = _mismatch(archive, hashes, entry) or not_an_archive(final, archive.filename)
    if problem:
        raise DownloadError(
            f"{final} is not the expected {archive.name} file: {problem}; delete it and run "
            f"again to download it from {source}"
        )
    _record(final.parent, archive, final, hashes, entry.get("url") if entry else None, entry)
    return hashes.sha256.hexdigest()


def _mismatch(archive: Archive, hashes: Hashes, entry: dict[str, Any] | None) -> str | None:
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


def _record(
    dest_dir: Path,
    archive: Archive,
    final: Path,
    hashes: Hashes,
    url: str | None,
    entry: dict[str, Any] | None,
) -> None:
    """Record ``final`` as verified, keeping the date it was first recorded."""
    record = read_record(dest_dir)
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
    write_json(dest_dir / RECORD, record)
