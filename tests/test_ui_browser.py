"""The animation in the Prefect UI, in a real browser (issue 13 A.1).

A real ``prefect server start`` (UI on, ``PREFECT_UI_API_URL`` set for its port), the media server
as its own process (``masactrl-animate media``) on the output root, and a flow run against that
server that writes a job folder (PNG frames, GIF, MP4, contact sheet through ``flows.stitch``) and
publishes it with ``flows.artifacts.publish_outputs``. Headless Chromium then opens the run, its
Artifacts tab, the outputs artifact, and checks that the GIF and the contact sheet load from the
media server (HTTP 200, natural size > 0).

The flow here is the test's own: it publishes through the same function the ``animate`` flow is
meant to call, without loading a model. Needs Debian's ``chromium`` and ``chromium-driver``
(``make test`` installs them when it runs as root with apt) and ``selenium`` (the test extra).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

CHROME_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1000",
]

FLOW_SCRIPT = r'''
import json, sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from prefect import flow

from flows import frames_io
from flows.artifacts import publish_outputs
from flows.stitch import stitch_outputs

job = Path(sys.argv[1])
out_file = Path(sys.argv[2])


@flow(name="ui-media-check")
def publish_job() -> dict:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(4):
        pixels = np.zeros((64, 96, 3), dtype=np.uint8)
        pixels[:, : 24 * (i + 1)] = (230, 120, 40)  # a bar that grows: a visible animation
        pixels += rng.integers(0, 20, pixels.shape, dtype=np.uint8)
        frames.append(frames_io.save_png_atomic(Image.fromarray(pixels), frames_io.frame_path(job, i)))
    outputs = stitch_outputs(frames, job, fps=4)
    result = {
        "job_hash": job.name + "0" * 48, "job_dir": str(job), "frames": [str(p) for p in frames], "frame_count": 4,
        "frames_rendered": 4, "frames_skipped": 0, "inversion_cached": False, "gif": outputs["gif"],
        "mp4": outputs["mp4"], "contact_sheet": outputs["contact_sheet"], "side_by_side": None,
        "outputs": outputs, "timings": {"total": 1.0}, "unet_calls": {},
    }
    plan_frames = [SimpleNamespace(index=i, prompt=f"frame {i}", pose=None) for i in range(4)]
    reports = [{"rendered": [0, 1, 2, 3], "frame_seconds": {}}]
    ids = publish_outputs(result, plan_frames, reports, job_name="Browser Cat")
    return {"ids": {k: str(v) for k, v in ids.items()}, "outputs": outputs}


state = publish_job(return_state=True)
out_file.write_text(json.dumps({"run_id": str(state.state_details.flow_run_id), **state.result()}))
'''


def _browser() -> tuple[str, str]:
    """Paths of Chromium and its driver, or skip with the reason."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium; it is in the project's test extra)")
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no Chromium/chromedriver here (Debian: apt-get install chromium chromium-driver; `make test` "
                    "does it when it runs as root with apt-get)")
    return chrome, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the process group this test started (by its leader's id)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


_IMAGES = """
return Array.from(document.images).map(img => ({src: img.src, complete: img.complete,
                                                width: img.naturalWidth, height: img.naturalHeight}));
"""


def _loaded_image(driver, url: str, timeout: float = 60) -> dict:
    """Wait until the page has an <img> of ``url`` that finished loading; return what the browser saw."""
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(d):
        for img in d.execute_script(_IMAGES):
            if img["src"] == url and img["complete"] and img["width"] > 0:
                return img
        return False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(loaded)
    except Exception as exc:  # noqa: BLE001 - say what the page had instead
        raise AssertionError(f"no loaded <img src={url}> on {driver.current_url}: "
                             f"{json.dumps(driver.execute_script(_IMAGES))}") from exc


def test_the_animation_shows_in_the_prefect_ui(tmp_path):
    chrome, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    port, media_port = _free_port(), _free_port()
    ui = f"http://127.0.0.1:{port}"
    media = f"http://127.0.0.1:{media_port}"
    out_root = tmp_path / "out"
    job = out_root / "0123456789abcdef"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MASACTRL_MEDIA"))}
    base.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1")
    server_env = {**base, "PREFECT_HOME": str(tmp_path / "server-home"),
                  # the UI calls the API here, not on the default port 4200
                  "PREFECT_UI_API_URL": f"{ui}/api"}
    client_env = {**base, "PREFECT_HOME": str(tmp_path / "client-home"), "PREFECT_API_URL": f"{ui}/api",
                  "MASACTRL_MEDIA_URL": media, "MASACTRL_MEDIA_ROOT": str(out_root)}
    logs = {name: tmp_path / f"{name}.log" for name in ("server", "media", "flow", "chromedriver")}
    procs = []
    driver = None
    try:
        procs.append(_start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            server_env, logs["server"]))
        procs.append(_start([str(BIN / "masactrl-animate"), "media", "--root", str(out_root),
                             "--port", str(media_port)], base, logs["media"]))
        _wait_http(f"{media}/.health", 120, procs[1], logs["media"])
        _wait_http(f"{ui}/api/health", 180, procs[0], logs["server"])

        script = tmp_path / "publish_job.py"
        script.write_text(FLOW_SCRIPT)
        published = tmp_path / "published.json"
        run = subprocess.run([sys.executable, str(script), str(job), str(published)], env=client_env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        info = json.loads(published.read_text())
        ids, outputs = info["ids"], info["outputs"]
        assert set(ids) == {f"{k}-browser-cat-0123456789abcdef" for k in ("frames", "outputs", "gif", "mp4", "animation")}
        gif_url = f"{media}/{job.name}/animation.gif"
        sheet_url = f"{media}/{job.name}/contact_sheet.png"

        options = Options()
        options.binary_location = chrome
        for arg in [*CHROME_ARGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(logs["chromedriver"])), options=options)
        driver.set_page_load_timeout(120)
        wait = WebDriverWait(driver, 90, poll_frequency=0.5)

        # the run page, its Artifacts tab, the outputs artifact
        driver.get(f"{ui}/runs/flow-run/{info['run_id']}")
        tab = wait.until(ec.element_to_be_clickable((By.XPATH, "//li[contains(@class, 'p-tab')][normalize-space(.)='Artifacts']")))
        tab.click()
        card = wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//*[normalize-space(text())='outputs-browser-cat-0123456789abcdef']")))
        driver.save_screenshot(str(tmp_path / "run-artifacts.png"))
        card.click()
        wait.until(ec.url_contains(f"/artifacts/artifact/{ids['outputs-browser-cat-0123456789abcdef']}"))
        gif = _loaded_image(driver, gif_url)
        sheet = _loaded_image(driver, sheet_url)
        driver.save_screenshot(str(tmp_path / "outputs-artifact.png"))
        # at their real size, and the media server answered the browser's requests with 200
        # (the page cannot see the status of a cross-origin image: the server's access log can)
        assert (gif["width"], gif["height"]) == (96, 64), gif
        assert (sheet["width"], sheet["height"]) == (192, 128), sheet
        access = logs["media"].read_text().splitlines()
        for path in (gif_url, sheet_url):
            path = path[len(media):]
            assert any(f'"GET {path} HTTP/1.1" 200 ' in line and "Chrome" in line for line in access), access[-20:]
        for url, path in ((gif_url, outputs["gif"]), (sheet_url, outputs["contact_sheet"])):
            response = httpx.get(url, timeout=10)
            assert response.status_code == 200 and response.content == Path(path).read_bytes()
        # every frame has a thumbnail on the page
        for i in range(4):
            _loaded_image(driver, f"{media}/{job.name}/frames/frame_{i:04d}.png", timeout=30)

        # the image artifact shows the GIF too
        driver.get(f"{ui}/artifacts/artifact/{ids['animation-browser-cat-0123456789abcdef']}")
        assert _loaded_image(driver, gif_url)["width"] == 96
        driver.save_screenshot(str(tmp_path / "image-artifact.png"))
    finally:
        if driver is not None:
            driver.quit()
        for proc in reversed(procs):
            _stop(proc)
