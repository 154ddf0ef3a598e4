"""A read-only HTTP server for the output root, and the URLs artifacts link to.

Browsers refuse ``file://`` links from the Prefect UI (an http page), and those links name the
worker's disk anyway. So job folders are served over HTTP and artifacts link there::

    masactrl-animate serve                       # starts this server beside the deployments
    masactrl-animate media --root /data/out      # alone (the compose service `media`)

``media_url(path)`` turns a file under the output root into ``$MASACTRL_MEDIA_URL/<relative path>``.
``MASACTRL_MEDIA_URL`` may name this server, a reverse proxy in front of it, or an object store's
public URL that mirrors the output root; without it the link stays ``file://``.

Settings (environment):

    MASACTRL_MEDIA_URL    base URL that serves the output root (e.g. https://media.example.com/out)
    MASACTRL_MEDIA_ROOT   the folder MASACTRL_MEDIA_URL serves (default: MASACTRL_OUTPUT_ROOT)
    MASACTRL_OUTPUT_ROOT  the output root (also the server's default root)
    MASACTRL_MEDIA_AUTH   "user:password": the server asks for HTTP basic auth

Why the standard library's ``ThreadingHTTPServer`` and not starlette/uvicorn (both installed with
Prefect): the server is a handful of read-only GET/HEAD rules that must also run as a daemon
thread inside ``masactrl-animate serve`` next to Prefect's own event loop. A thread per request
is plenty for a few people looking at GIFs, it needs no event loop of its own, and every rule
that matters here (path confinement, ranges, no listing, auth) is explicit code below instead of
framework defaults whose behaviour may change between releases. Heavy public traffic belongs
behind a reverse proxy or an object store anyway (``MASACTRL_MEDIA_URL``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import email.utils
import hmac
import logging
import os
import posixpath
import re
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

logger = logging.getLogger(__name__)

MEDIA_URL_ENV = "MASACTRL_MEDIA_URL"
MEDIA_ROOT_ENV = "MASACTRL_MEDIA_ROOT"
OUTPUT_ROOT_ENV = "MASACTRL_OUTPUT_ROOT"
MEDIA_AUTH_ENV = "MASACTRL_MEDIA_AUTH"
DEFAULT_PORT = 4300

# Explicit, so the answer does not depend on the host's /etc/mime.types.
MIME_TYPES = {
    ".gif": "image/gif",
    ".mp4": "video/mp4",
    ".png": "image/png",
    ".webp": "image/webp",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
    ".yaml": "text/plain; charset=utf-8",
    ".yml": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
}
DEFAULT_MIME = "application/octet-stream"
# A name no file can be served under (hidden names never are): the health probe's.
HEALTH_PATH = "/.health"
# Pictures and videos of a job folder do not change once written (the folder is named by the hash
# of everything that determines them; a re-render writes the same bytes): cache them for a day.
# JSON files (result.json, index files) change as a job progresses: always revalidate them.
MEDIA_SUFFIXES = {".gif", ".mp4", ".png", ".webp", ".jpg", ".jpeg"}
MEDIA_MAX_AGE = 86400
_CHUNK = 256 * 1024


# --- URLs -----------------------------------------------------------------------------------


def media_root(fallback: str | os.PathLike | None = None) -> Optional[Path]:
    """The folder that ``MASACTRL_MEDIA_URL`` serves: ``MASACTRL_MEDIA_ROOT``, else
    ``MASACTRL_OUTPUT_ROOT``, else ``fallback`` (e.g. the job's output folder)."""
    for value in (os.environ.get(MEDIA_ROOT_ENV), os.environ.get(OUTPUT_ROOT_ENV), fallback):
        if value:
            return Path(value).expanduser().absolute()
    return None


def media_url(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """A URL a browser can open for ``path``, a file below the output root.

    With ``MASACTRL_MEDIA_URL`` set: that base URL plus the path relative to the served root
    (``media_root(root)``), each part percent-encoded. Without it, or for a path outside the root
    (no server could serve it), the ``file://`` URI of the path.
    """
    target = Path(path).expanduser().absolute()
    base = os.environ.get(MEDIA_URL_ENV, "").strip()
    served = media_root(root)
    if not base or served is None:
        return target.as_uri()
    try:
        rel = target.relative_to(served)
    except ValueError:
        # Also try the real paths: the root or the job folder may be reached through a symlink.
        try:
            rel = target.resolve().relative_to(served.resolve())
        except ValueError:
            logger.debug("%s is outside the media root %s; linking the file itself", target, served)
            return target.as_uri()
    return base.rstrip("/") + "/" + "/".join(quote(part) for part in rel.parts)


# --- the server ------------------------------------------------------------------------------


@dataclass
class _Range:
    start: int
    end: int  # inclusive


def parse_range(header: str, size: int) -> Optional[_Range] | str:
    """One ``bytes=`` range of a file of ``size`` bytes: a _Range, None (serve the whole file:
    no range, a form this server does not support, several ranges) or "unsatisfiable"."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return _Range(max(0, size - n), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignore the header (RFC 9110 14.1.1)
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    return _Range(start, min(end, size - 1))


class MediaHandler(BaseHTTPRequestHandler):
    """GET and HEAD of regular files below ``server.root``; everything else is refused."""

    server_version = "masactrl-media"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # -- entry points
    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _refuse_method(self) -> None:
        self._plain(HTTPStatus.METHOD_NOT_ALLOWED, "read-only: GET and HEAD only", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    # -- helpers
    def log_message(self, format: str, *args) -> None:  # noqa: A002
        logger.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code="-", size="-") -> None:
        """One access line per answer: on stderr for the standalone server, else the debug log."""
        agent = self.headers.get("User-Agent", "-") if getattr(self, "headers", None) else "-"
        status = getattr(code, "value", code)
        line = f'"{self.requestline}" {status} {size} "{agent}"'
        if self.server.access_log:
            sys.stderr.write(f"{self.address_string()} - [{self.log_date_time_string()}] {line}\n")
        else:
            logger.debug("%s %s", self.address_string(), line)

    def _plain(self, status: HTTPStatus, text: str, headers: Optional[dict] = None, body: bool = True) -> None:
        data = (text + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(data)

    def _authorised(self) -> bool:
        expected = self.server.auth
        if not expected:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, expected.encode("utf-8"))

    def _resolve(self) -> Optional[Path]:
        """The regular file the request names, or None when it must not be served."""
        raw = urlsplit(self.path).path
        text = unquote(raw, errors="strict") if "%" in raw else raw
        if "\x00" in text or "\\" in text:
            return None
        parts = [p for p in text.split("/") if p]
        # No parent references, and nothing hidden: temporary files of atomic writes start with '.'.
        if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
            return None
        root: Path = self.server.root
        try:
            candidate = (root / posixpath.join(*parts)).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            return None
        # resolve() follows symlinks: one that points outside the root lands outside it here.
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None  # directories included: there is no listing
        return candidate

    def _serve(self, body: bool) -> None:
        if urlsplit(self.path).path == HEALTH_PATH:  # for probes: open, like Prefect's /api/health
            self._plain(HTTPStatus.OK, "ok", body=body)
            return
        if not self._authorised():
            self._plain(HTTPStatus.UNAUTHORIZED, "authentication required",
                        {"WWW-Authenticate": 'Basic realm="masactrl media", charset="UTF-8"'}, body)
            return
        try:
            path = self._resolve()
        except UnicodeDecodeError:
            path = None
        if path is None:
            self._plain(HTTPStatus.NOT_FOUND, "not found", body=body)
            return
        try:
            handle = path.open("rb")
        except OSError:
            self._plain(HTTPStatus.NOT_FOUND, "not found", body=body)
            return
        with handle:
            stat = os.fstat(handle.fileno())
            size = stat.st_size
            etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
            suffix = path.suffix.lower()
            headers = {
                "Content-Type": MIME_TYPES.get(suffix, DEFAULT_MIME),
                "Accept-Ranges": "bytes",
                "ETag": etag,
                "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
                "X-Content-Type-Options": "nosniff",
                **_disposition(self.path, path.name),
                # Behind basic auth, shared caches must not keep a copy.
                "Cache-Control": (f"{'private' if self.server.auth else 'public'}, max-age={MEDIA_MAX_AGE}"
                                  if suffix in MEDIA_SUFFIXES else "no-cache"),
            }
            inm = self.headers.get("If-None-Match")
            if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                for k in ("ETag", "Cache-Control", "Last-Modified"):
                    self.send_header(k, headers[k])
                self.end_headers()
                return
            wanted = parse_range(self.headers.get("Range", ""), size)
            if_range = self.headers.get("If-Range")
            if if_range is not None and if_range.strip() != etag:
                wanted = None  # the client's partial copy is of another version: send it all
            if wanted == "unsatisfiable":
                self._plain(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range not satisfiable",
                            {"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"}, body)
                return
            if isinstance(wanted, _Range):
                status, start, length = HTTPStatus.PARTIAL_CONTENT, wanted.start, wanted.end - wanted.start + 1
                headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{size}"
            else:
                status, start, length = HTTPStatus.OK, 0, size
            self.send_response(status)
            headers["Content-Length"] = str(length)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if not body:
                return
            handle.seek(start)
            left = length
            try:
                while left > 0:
                    chunk = handle.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                # Browsers drop video range requests all the time when seeking.
                self.close_connection = True


def _disposition(request_path: str, name: str) -> dict[str, str]:
    """``?download`` on a link (the sweep's best job file): the browser saves the file under its
    name in one click instead of showing it."""
    if "download" not in parse_qs(urlsplit(request_path).query, keep_blank_values=True):
        return {}
    return {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"}


def download_url(url: str) -> str:
    """``url`` of the media server, answered as a download (``Content-Disposition: attachment``)."""
    return url if url.startswith("file:") else f"{url}?download"


class MediaServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path, auth: Optional[str] = None):
        self.root = root
        self.auth = auth or None
        self.access_log = False  # one line per request on stderr (the standalone server turns it on)
        super().__init__(address, MediaHandler)


@dataclass
class RunningMediaServer:
    """A media server running in a background thread of this process."""

    server: MediaServer
    thread: threading.Thread
    root: Path
    host: str
    port: int
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)

    def __enter__(self) -> "RunningMediaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_auth(auth: Optional[str]) -> Optional[str]:
    if auth and ":" not in auth:
        raise ValueError(f"{MEDIA_AUTH_ENV} must be 'user:password'")
    return auth or None


def make_media_server(root: str | os.PathLike, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                      auth: Optional[str] = None) -> MediaServer:
    """A bound (not yet serving) media server for ``root``; ``auth`` defaults to $MASACTRL_MEDIA_AUTH."""
    root_path = Path(root).expanduser().resolve()  # may not exist yet: answers 404 until it does
    if auth is None:
        auth = os.environ.get(MEDIA_AUTH_ENV) or None
    return MediaServer((host, port), root_path, _check_auth(auth))


def start_media_server(root: str | os.PathLike, host: str = "127.0.0.1", port: Optional[int] = DEFAULT_PORT,
                       auth: Optional[str] = None) -> RunningMediaServer:
    """Serve ``root`` read-only from a daemon thread. Stop with ``.stop()``.

    ``port`` 0 picks a free port; ``None`` tries DEFAULT_PORT and takes a free port when that one
    is busy (several ``serve`` processes on one machine).
    """
    if port is None:
        try:
            server = make_media_server(root, host, DEFAULT_PORT, auth)
        except OSError:
            server = make_media_server(root, host, 0, auth)
    else:
        server = make_media_server(root, host, port, auth)
    thread = threading.Thread(target=server.serve_forever, name="masactrl-media", daemon=True)
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    return RunningMediaServer(server, thread, server.root, str(bound_host), int(bound_port))


def serve_media_forever(root: str | os.PathLike, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                        auth: Optional[str] = None) -> None:
    """Serve ``root`` in the foreground until interrupted (the ``media`` command and service)."""
    server = make_media_server(root, host, port, auth)
    server.access_log = True
    bound_host, bound_port = server.server_address[:2]
    print(f"media server: {server.root} on http://{bound_host}:{bound_port}/"
          f"{' (basic auth)' if server.auth else ''}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=None,
                        help=f"folder to serve (default: ${OUTPUT_ROOT_ENV}, else ./out)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")


def default_root() -> Path:
    return Path(os.environ.get(OUTPUT_ROOT_ENV) or "out").expanduser().absolute()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ui.media", description="Serve the output root read-only.")
    add_media_arguments(parser)
    args = parser.parse_args(argv)
    serve_media_forever(args.root or default_root(), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
