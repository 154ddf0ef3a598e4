"""The media server answers ``?download`` with an attachment (the sweep's best job file: one click
saves it), and the same file without it inline, as before."""

from __future__ import annotations

import httpx

from flows.ui.media import download_url, start_media_server


def test_download_links_save_the_file(tmp_path):
    (tmp_path / "sweeps").mkdir()
    job = tmp_path / "sweeps" / "best job.yaml"
    job.write_text("name: best\n")
    running = start_media_server(tmp_path, port=0)
    try:
        url = f"{running.url}/sweeps/best%20job.yaml"
        shown = httpx.get(url, timeout=10)
        assert shown.status_code == 200 and "content-disposition" not in shown.headers
        assert shown.headers["content-type"].startswith("text/plain")
        saved = httpx.get(download_url(url), timeout=10)
        assert saved.status_code == 200 and saved.content == job.read_bytes()
        assert saved.headers["content-disposition"] == "attachment; filename*=UTF-8''best%20job.yaml"
        assert httpx.get(f"{running.url}/sweeps/missing.yaml?download", timeout=10).status_code == 404
    finally:
        running.stop()
    assert download_url(job.as_uri()) == job.as_uri()  # a file:// link has no server to ask
