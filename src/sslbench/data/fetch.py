"""Fetching one archive's bytes over the network with ``urllib`` only, resuming what was received.

:func:`fetch` completes ``<dest_dir>/<filename>.part`` from a URL (``http(s)://`` or
``file://``): bytes already in the part are kept and the rest is asked for with an HTTP
``Range``; a server that ignores it, or whose file the part cannot be a prefix of, is read again
from the start. Every byte of the part goes through a :class:`~sslbench.data.checksums.Hashes`,
so the caller can verify the whole file without reading it again. Any failure on the network's
side is one :class:`NetworkError` with a one-line reason, and the part is kept for next time.
"""

from __future__ import annotations

import errno
import http.client
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm.auto import tqdm

from sslbench.host import no_space

from .. import __version__
from ..errors import one_line
from .checksums import CHUNK, Hashes

__all__ = ["USER_AGENT", "NetworkError", "fetch"]

USER_AGENT = f"sslbench/{__version__} (+python-urllib)"


class NetworkError(Exception):
    """Fetching failed for a reason on the network's side; ``str`` is the reason."""


class _RangeNotSatisfiable(Exception):
    """The server answered 416 to a resumed download that is not already complete."""


def fetch(
    source: str,
    part: Path,
    hashes: Hashes,
    size: int | None,
    name: str,
    progress: bool,
    timeout: float,
) -> None:
    """Complete ``part`` from ``source``, resuming what it holds; ``hashes`` covers all of it.

    ``size``: the whole file's bytes when known; ``name`` labels the progress bar.

    Raises :class:`NetworkError` on any network failure, keeping what was received.
    """
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()  # longer than the whole file: cannot be a prefix of it
        offset = 0
    if offset:
        hashes.update_from(part)
        if size is not None and offset == size:
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
            desc=name,
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
                    raise NetworkError(_reason(err)) from None
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
        raise NetworkError(f"connection closed after {hashes.size} of {total} bytes")


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
        raise NetworkError(f"HTTP {err.code} {err.reason}") from None
    except ValueError as err:  # malformed URL
        raise NetworkError(one_line(err)) from None
    except (OSError, http.client.HTTPException) as err:
        raise NetworkError(_reason(err)) from None


def _refuse_html(response: Any) -> None:
    """An HTML page (a login wall, a 200 "not found" page) is never the archive."""
    kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        response.close()
        raise NetworkError(f"the server sent a web page ({kind}), not the archive")


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
