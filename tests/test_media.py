"""The media server (flows/ui/media.py) as a real process over HTTP, media_url, and the modes of
finished output files."""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from flows.jobdir import frames_io
from flows.ui.media import media_url, parse_range
from flows.jobdir.stitch import stitch_outputs

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MediaProcess:
    """``masactrl-animate media`` in its own process group, stopped by its id."""

    def __init__(self, root: Path, log: Path, auth: str | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MASACTRL_MEDIA")}
        if auth:
            env["MASACTRL_MEDIA_AUTH"] = auth
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "media", "--root", str(root), "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                httpx.head(self.url + "/", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"media server did not start:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def media_tree(tmp_path_factory):
    """An output root with a job folder, a secret file beside the root, and a symlink escaping it."""
    base = tmp_path_factory.mktemp("media")
    root = base / "out"
    job = root / "0123456789abcdef"
    (job / "frames").mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)) for _ in range(3)]
    for i, f in enumerate(frames):
        frames_io.save_png_atomic(f, frames_io.frame_path(job, i))
    stitch_outputs(frames_io_paths(job, 3), job, fps=4)
    frames_io.write_json_atomic(job / "result.json", {"ok": True})
    frames[0].save(job / "still.webp", format="WEBP")
    (job / ".animation.abc.tmp.mp4").write_bytes(b"half written")
    (base / "secret.txt").write_text("outside the root")
    (job / "escape.png").symlink_to(base / "secret.txt")
    (job / "escape-dir").symlink_to(base, target_is_directory=True)
    (job / "inside.gif").symlink_to(job / "animation.gif")
    return root, job


def frames_io_paths(job: Path, n: int) -> list[Path]:
    return [frames_io.frame_path(job, i) for i in range(n)]


@pytest.fixture(scope="module")
def media_server(media_tree, tmp_path_factory):
    root, _ = media_tree
    proc = MediaProcess(root, tmp_path_factory.mktemp("media-log") / "media.log")
    try:
        yield proc
    finally:
        proc.stop()


def test_files_with_their_mime_types(media_server, media_tree):
    _, job = media_tree
    expected = {
        "animation.gif": "image/gif", "animation.mp4": "video/mp4", "contact_sheet.png": "image/png",
        "frames/frame_0001.png": "image/png", "result.json": "application/json", "still.webp": "image/webp",
    }
    for rel, mime in expected.items():
        r = httpx.get(f"{media_server.url}/{job.name}/{rel}", timeout=10)
        assert r.status_code == 200, rel
        assert r.headers["content-type"] == mime, rel
        assert r.content == (job / rel).read_bytes(), rel
        assert r.headers["accept-ranges"] == "bytes"
        assert r.headers["x-content-type-options"] == "nosniff"
    gif = httpx.get(f"{media_server.url}/{job.name}/animation.gif", timeout=10)
    assert "max-age=86400" in gif.headers["cache-control"] and gif.headers["cache-control"].startswith("public")
    assert httpx.get(f"{media_server.url}/{job.name}/result.json", timeout=10).headers["cache-control"] == "no-cache"
    # an unchanged file revalidates without a body
    again = httpx.get(f"{media_server.url}/{job.name}/animation.gif", headers={"If-None-Match": gif.headers["etag"]},
                      timeout=10)
    assert again.status_code == 304 and again.content == b""
    # a symlink that stays inside the root is served
    assert httpx.get(f"{media_server.url}/{job.name}/inside.gif", timeout=10).content == gif.content


def test_range_requests_return_the_file_slice(media_server, media_tree):
    _, job = media_tree
    data = (job / "animation.mp4").read_bytes()
    size = len(data)
    url = f"{media_server.url}/{job.name}/animation.mp4"
    for header, (start, end) in {
        "bytes=0-99": (0, 99),
        "bytes=100-": (100, size - 1),
        "bytes=-50": (size - 50, size - 1),
        f"bytes=10-{size + 1000}": (10, size - 1),
    }.items():
        r = httpx.get(url, headers={"Range": header}, timeout=10)
        assert r.status_code == 206, header
        assert r.content == data[start:end + 1], header
        assert r.headers["content-range"] == f"bytes {start}-{end}/{size}", header
        assert int(r.headers["content-length"]) == end - start + 1
        assert r.headers["content-type"] == "video/mp4"
    r = httpx.get(url, headers={"Range": f"bytes={size}-"}, timeout=10)
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    # a stale If-Range gets the whole, current file
    r = httpx.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'}, timeout=10)
    assert r.status_code == 200 and r.content == data


def test_head_sends_headers_only(media_server, media_tree):
    _, job = media_tree
    r = httpx.head(f"{media_server.url}/{job.name}/animation.gif", timeout=10)
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == (job / "animation.gif").stat().st_size
    assert r.headers["content-type"] == "image/gif"
    assert httpx.post(f"{media_server.url}/{job.name}/animation.gif", timeout=10).status_code == 405


@pytest.mark.parametrize("path", [
    "/", "/0123456789abcdef", "/0123456789abcdef/", "/0123456789abcdef/frames/",  # folders: no listing
    "/../secret.txt", "/0123456789abcdef/../../secret.txt", "/%2e%2e/secret.txt",
    "/0123456789abcdef/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/0123456789abcdef/escape.png",
    "/0123456789abcdef/escape-dir/secret.txt", "/0123456789abcdef/.animation.abc.tmp.mp4",
    "/0123456789abcdef/missing.gif", "/%00", "/0123456789abcdef/animation.gif%00.png",
])
def test_outside_root_hidden_and_folders_are_refused(media_server, path):
    # send the path as written (no client-side normalisation of '..')
    with socket.create_connection(("127.0.0.1", media_server.port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status == 404, (path, head)
    assert b"outside the root" not in body and b"frame_" not in body and b"animation" not in body


def test_basic_auth(media_tree, tmp_path):
    root, job = media_tree
    server = MediaProcess(root, tmp_path / "media.log", auth="viewer:s3cret")
    try:
        url = f"{server.url}/{job.name}/animation.gif"
        r = httpx.get(url, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic ")
        assert r.content != (job / "animation.gif").read_bytes()
        assert httpx.get(url, auth=("viewer", "wrong"), timeout=10).status_code == 401
        bad = {"Authorization": "Basic " + base64.b64encode(b"viewer").decode()}
        assert httpx.get(url, headers=bad, timeout=10).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Basic %%%"}, timeout=10).status_code == 401
        ok = httpx.get(url, auth=("viewer", "s3cret"), timeout=10)
        assert ok.status_code == 200 and ok.content == (job / "animation.gif").read_bytes()
        assert ok.headers["cache-control"].startswith("private")  # not for shared caches
        # auth comes before the path check: no probing what exists
        assert httpx.get(f"{server.url}/{job.name}/nothing.gif", timeout=10).status_code == 401
        # the health probe stays open (compose's health check has no credentials)
        assert httpx.get(f"{server.url}/.health", timeout=10).status_code == 200
    finally:
        server.stop()


def test_parse_range_forms():
    assert parse_range("", 10) is None
    assert parse_range("bytes=0-0", 10).__dict__ == {"start": 0, "end": 0}
    assert parse_range("bytes=-3", 10).__dict__ == {"start": 7, "end": 9}
    assert parse_range("bytes=-30", 10).__dict__ == {"start": 0, "end": 9}
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("bytes=0-1,4-5", 10) is None  # several ranges: the whole file
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=10-", 10) == "unsatisfiable"
    assert parse_range("bytes=-0", 10) == "unsatisfiable"


def test_media_url(monkeypatch, tmp_path):
    for var in ("MASACTRL_MEDIA_URL", "MASACTRL_MEDIA_ROOT", "MASACTRL_OUTPUT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    gif = tmp_path / "out" / "abc" / "an animation.gif"
    # no media URL: the file itself
    assert media_url(gif, tmp_path / "out") == gif.as_uri()
    monkeypatch.setenv("MASACTRL_MEDIA_URL", "https://media.example.com/jobs/")
    # the job's output folder as root, parts percent-encoded
    assert media_url(gif, tmp_path / "out") == "https://media.example.com/jobs/abc/an%20animation.gif"
    # the configured output root wins over the job's folder
    monkeypatch.setenv("MASACTRL_OUTPUT_ROOT", str(tmp_path))
    assert media_url(gif, tmp_path / "out") == "https://media.example.com/jobs/out/abc/an%20animation.gif"
    monkeypatch.setenv("MASACTRL_MEDIA_ROOT", str(tmp_path / "out" / "abc"))
    assert media_url(gif) == "https://media.example.com/jobs/an%20animation.gif"
    # outside what the server serves: no URL could reach it
    assert media_url(tmp_path / "elsewhere.gif") == (tmp_path / "elsewhere.gif").as_uri()
    # through a symlinked root
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    monkeypatch.setenv("MASACTRL_MEDIA_ROOT", str(tmp_path / "link"))
    assert media_url(tmp_path / "real" / "x.png") == "https://media.example.com/jobs/x.png"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_finished_files_follow_the_umask(tmp_path, umask, mode):
    frame = Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8))
    old = os.umask(umask)
    try:
        png = frames_io.save_png_atomic(frame, frames_io.frame_path(tmp_path, 0))
        outputs = stitch_outputs([png], tmp_path, fps=4, mp4=True)
        js = frames_io.write_json_atomic(tmp_path / "result.json", {"a": 1})
    finally:
        os.umask(old)
    for path in [png, js, *map(Path, outputs.values())]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path.name, oct(path.stat().st_mode))
    assert not [p for p in tmp_path.rglob(".*tmp*")]  # no temporary files left behind


def test_serve_starts_the_media_server_and_points_flow_runs_at_it(monkeypatch, tmp_path, media_tree):
    from flows.cli import _start_media, build_parser

    root, job = media_tree
    for var in ("MASACTRL_MEDIA_URL", "MASACTRL_MEDIA_ROOT", "MASACTRL_OUTPUT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    args = build_parser().parse_args(["serve", "--media-root", str(root), "--media-port", "0"])
    assert not args.no_media
    running = _start_media(args)
    try:
        assert os.environ["MASACTRL_MEDIA_URL"] == running.url and os.environ["MASACTRL_MEDIA_ROOT"] == str(root)
        url = media_url(job / "animation.gif")
        assert url == f"{running.url}/{job.name}/animation.gif"
        assert httpx.get(url, timeout=10).content == (job / "animation.gif").read_bytes()
        # a busy port given explicitly is an error, not a silent move
        busy = build_parser().parse_args(["serve", "--media-root", str(root), "--media-port", str(running.port)])
        assert _start_media(busy) is None
    finally:
        running.stop()
    # an operator's URL (a proxy) is kept; without --media-port a busy default port moves to a free one
    monkeypatch.setenv("MASACTRL_MEDIA_URL", "https://media.example.com")
    monkeypatch.delenv("MASACTRL_MEDIA_ROOT")
    with socket.socket() as blocker:
        try:
            blocker.bind(("127.0.0.1", 4300))
            blocker.listen()
        except OSError:
            pass  # something on this machine holds it already: busy all the same
        running = _start_media(build_parser().parse_args(["serve", "--media-root", str(root)]))
        try:
            assert running.port != 4300
            assert os.environ["MASACTRL_MEDIA_URL"] == "https://media.example.com"
        finally:
            running.stop()
    assert build_parser().parse_args(["serve", "--no-media"]).no_media
