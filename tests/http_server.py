"""A small local HTTP file server for offline download tests.

:class:`FileServer` serves a dict ``{path: bytes}`` on ``127.0.0.1`` (a free port) from a
thread, answers HTTP Range requests (206 + Content-Range, 416 past the end), records every
request, and can be told to misbehave: cut a response off after N bytes, ignore Range, or
answer a path with an error status::

    with FileServer({"/mirror/a.tgz": data}) as server:
        url = server.url("/mirror/a.tgz")
        server.cut("/mirror/a.tgz", after=1000)  # the next response stops after 1000 bytes
        ...
        assert server.requests[-1].range == "bytes=1000-"
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FileServer", "Request", "serve", "unused_port"]


@dataclass(frozen=True)
class Request:
    """One request the server received."""

    method: str
    path: str
    range: str | None  # the Range header, e.g. "bytes=100-"
    user_agent: str | None


class FileServer:
    """Serve ``files`` (URL path -> content) on 127.0.0.1; see the module docstring."""

    def __init__(self, files: dict[str, bytes] | None = None):
        self.files: dict[str, bytes] = dict(files or {})
        self.requests: list[Request] = []
        self.ignore_range = False  # answer 200 with the whole file even when asked for a range
        self.status: dict[str, int] = {}  # path -> error status to answer (e.g. 404, 500)
        self.content_type: dict[str, str] = {}  # path -> Content-Type (default octet-stream)
        self.no_length: set[str] = set()  # paths answered without Content-Length
        self._cuts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- control -------------------------------------------------------------------------

    def start(self) -> FileServer:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    def url(self, path: str = "") -> str:
        """Absolute URL of ``path`` (which starts with '/') on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def cut(self, path: str, after: int, times: int = 1) -> None:
        """Cut the next ``times`` responses for ``path`` off after ``after`` body bytes."""
        with self._lock:
            self._cuts.setdefault(path, []).extend([after] * times)

    def requests_for(self, path: str) -> list[Request]:
        """The requests received for ``path`` so far."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # --- used by the handler -------------------------------------------------------------

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_cut(self, path: str) -> int | None:
        with self._lock:
            cuts = self._cuts.get(path)
            return cuts.pop(0) if cuts else None


class _Handler(BaseHTTPRequestHandler):
    server_owner: FileServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_GET(self) -> None:
        self._respond(body=True)

    def _respond(self, body: bool) -> None:
        owner = self.server_owner
        path = self.path.split("?", 1)[0]
        range_header = self.headers.get("Range")
        owner._log(Request(self.command, path, range_header, self.headers.get("User-Agent")))
        status = owner.status.get(path)
        data = owner.files.get(path)
        if status is not None or data is None:
            self.send_error(status or 404)
            return

        start, end = 0, len(data) - 1
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if match and not owner.ignore_range:
            start = int(match.group(1))
            if match.group(2):
                end = min(end, int(match.group(2)))
            if start >= len(data) or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        payload = data[start : end + 1]
        self.send_header("Content-Type", owner.content_type.get(path, "application/octet-stream"))
        if path in owner.no_length:
            self.close_connection = True  # the body ends when the connection does
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        cut = owner._take_cut(path)
        if cut is None:
            self.wfile.write(payload)
            return
        self.wfile.write(payload[:cut])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the stream end early
        except OSError:
            pass


@contextmanager
def serve(files: dict[str, bytes] | None = None) -> Iterator[FileServer]:
    """A started :class:`FileServer` for the duration of the ``with`` block (or fixture)."""
    server = FileServer(files).start()
    try:
        yield server
    finally:
        server.stop()


def unused_port() -> int:
    """A local TCP port with nothing listening on it (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
