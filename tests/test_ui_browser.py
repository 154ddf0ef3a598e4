"""The animation in the Prefect UI, in a real browser.

A real ``prefect server start`` (UI on, ``PREFECT_UI_API_URL`` set for its port) and
``masactrl-animate serve`` (its media server on the output root; the runs it starts get
MASACTRL_MEDIA_URL/ROOT), then real jobs on the tiny model through the deployment:

- an invalid job created from the deployment as the UI form does: the run fails with the clean
  validation message as its state message and no traceback in its logs;
- a tiny job (64x64, 3 steps, 3 frames) through ``masactrl-animate submit``; while it runs, a second
  ``submit`` whose source picture is gone by the time the worker gets it: it prints the run's
  "Invalid job: source.image: ..." message, no traceback, exit 1;
- headless Chromium on the finished run's Artifacts tab and outputs artifact: the GIF and the contact
  sheet load from the media server (HTTP 200 as the browser saw it, natural size > 0), every frame
  has a thumbnail;
- the deployment's run form in both UIs: the pose kinds are a choice, not a JSON box.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them when it runs as
root with apt) and ``selenium`` (the test extra).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

CHROME_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1000",
]
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


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



def _wait(check, timeout: float, what: str, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    tails = "\n".join(f"--- {p}:\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


def _state(api: str, run_id: str) -> dict:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"] or {}


def _run_logs(api: str, run_id: str) -> list[str]:
    found = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}}, timeout=10)
    return [entry["message"] for entry in found.json()]


def _submit(args: list[str], env: dict, folder: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = folder / f"{name}.stdout", folder / f"{name}.stderr"
    proc = subprocess.Popen([str(BIN / "masactrl-animate"), "submit", *args], env=env, cwd=folder,
                            stdout=out.open("w"), stderr=err.open("w"), start_new_session=True)
    return proc, out, err


def _submitted_id(err: Path) -> str | None:
    found = re.search(r"flow run ([0-9a-f-]{36}) ", err.read_text())
    return found and found.group(1)


def _statuses(driver, seen: dict) -> dict:
    """URL -> HTTP status of the responses the browser received (Chrome's performance log)."""
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            seen[response["url"]] = response["status"]
    return seen


def _post_when_available(url: str, body: dict, attempts: int = 10) -> httpx.Response:
    """POST, waiting out 503s: the SQLite-backed server answers 503 while its database is busy
    (the serve process registering deployments on a loaded 2-core machine)."""
    for _ in range(attempts):
        response = httpx.post(url, json=body, timeout=30)
        if response.status_code != 503:
            return response
        time.sleep(2)
    return response


def test_real_jobs_in_the_prefect_ui(tmp_path, tiny_checkpoint):
    chrome, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage import data

    port, media_port = _free_port(), _free_port()
    ui, media = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{media_port}"
    api = f"{ui}/api"
    out_root, jobs = tmp_path / "out", tmp_path / "jobs"
    out_root.mkdir()
    jobs.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MASACTRL_"))}
    base.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1")
    # the UI calls the API here, not on the default port 4200
    server_env = {**base, "PREFECT_HOME": str(tmp_path / "server-home"), "PREFECT_UI_API_URL": api}
    client_env = {**base, "PREFECT_HOME": str(tmp_path / "client-home"), "PREFECT_API_URL": api,
                  "MASACTRL_TINY_DIR": str(tiny_checkpoint), "MASACTRL_MODEL": "tiny",
                  "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    logs = {name: tmp_path / f"{name}.log" for name in ("server", "serve", "chromedriver")}
    procs: list[subprocess.Popen] = []
    driver = None
    try:
        procs.append(_start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            server_env, logs["server"]))
        _wait_http(f"{api}/health", 180, procs[0], logs["server"])
        # --limit 1: the second job below waits while the first renders
        procs.append(_start([str(BIN / "masactrl-animate"), "serve", "--inbox", str(tmp_path / "inbox"),
                             "--no-schedule", "--limit", "1", "--media-port", str(media_port),
                             "--media-root", str(out_root)], client_env, logs["serve"]))
        _wait_http(f"{media}/.health", 120, procs[1], logs["serve"])

        def deployment():
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            return next((d for d in found if d["name"] == "animate"), None)

        dep = _wait(deployment, 180, "the animate deployment", logs.values())

        # An invalid job created from the deployment, as the UI's run form does
        form_job = {"name": "no-source", "source": {"image": None, "prompt": ""}, "frames": {"prompts": ["a cat"]},
                    "model": {"model": "tiny"}, "output": {"folder": str(out_root / "invalid")}}
        created = _post_when_available(f"{api}/deployments/{dep['id']}/create_flow_run",
                                       {"parameters": {"job": form_job}})
        assert created.status_code == 201, created.text  # the schema accepts it: the rule is cross-field
        invalid_id = created.json()["id"]
        state = _wait(lambda: _state(api, invalid_id).get("type") in FINAL and _state(api, invalid_id), 180,
                      "the invalid run", logs.values())
        assert state["type"] == "FAILED"
        assert state["message"] == ("Invalid job: source.image / source.prompt: give a source image, or a source "
                                    "prompt to generate one from")
        run_logs = _wait(lambda: (found := _run_logs(api, invalid_id)) and
                         any(m.startswith("Finished in state Failed") for m in found) and found,
                         60, "the invalid run's logs", logs.values())
        assert state["message"] in run_logs
        assert not any("Traceback" in m for m in run_logs), run_logs
        assert not (out_root / "invalid").exists()

        # A real tiny job through submit; a second one whose picture is gone when it runs
        Image.fromarray(data.chelsea()).resize((96, 64)).save(jobs / "cat.png")
        shutil.copy(jobs / "cat.png", jobs / "gone.png")
        job = {"name": "browser-cat", "source": {"image": "cat.png", "prompt": "a photo of a cat"},
               "frames": {"prompts": ["a photo of a cat sitting", "a photo of a cat standing",
                                      "a photo of a cat jumping"]},
               "model": {"model": "tiny"}, "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
               "output": {"folder": str(out_root), "fps": 5}, "execution": {"chunk_size": 3}}
        (jobs / "job.yaml").write_text(yaml.safe_dump(job))
        (jobs / "gone.yaml").write_text(yaml.safe_dump({**job, "name": "gone-cat",
                                                        "source": {**job["source"], "image": "gone.png"}}))
        good, good_out, good_err = _submit([str(jobs / "job.yaml"), "--json", "--no-progress", "--timeout", "600"],
                                           client_env, tmp_path, "good")
        procs.append(good)
        good_id = _wait(lambda: _submitted_id(good_err), 120, "the job's flow run", [good_err])
        _wait(lambda: _state(api, good_id).get("type") in ("RUNNING", *FINAL), 180, "the job to start",
              [good_err, logs["serve"]])
        gone, _, gone_err = _submit([str(jobs / "gone.yaml"), "--no-progress", "--timeout", "600"], client_env,
                                    tmp_path, "gone")
        procs.append(gone)
        gone_id = _wait(lambda: _submitted_id(gone_err), 120, "the second flow run", [gone_err])
        (jobs / "gone.png").unlink()  # valid when submitted, gone by the time the worker validates it
        assert _state(api, gone_id).get("type") in ("SCHEDULED", "PENDING"), _state(api, gone_id)

        assert good.wait(600) == 0, good_err.read_text()[-3000:] + logs["serve"].read_text()[-3000:]
        result = json.loads(good_out.read_text())
        assert result["frame_count"] == 3 and result["frames_rendered"] == 3
        assert gone.wait(300) == 1, gone_err.read_text()[-3000:]
        printed = gone_err.read_text()
        assert re.search(rf"flow run {gone_id} ended Failed: Invalid job: source\.image: .*gone\.png", printed), printed
        assert "Traceback" not in printed, printed
        assert _state(api, gone_id)["message"].startswith("Invalid job: source.image: ")
        assert not any("Traceback" in m for m in _run_logs(api, gone_id))

        # In the browser: the run's artifacts show the animation from the media server
        job_dir = Path(result["job_dir"])
        hash16 = job_dir.name[:16]

        def url_of(path) -> str:
            return f"{media}/{Path(path).relative_to(out_root).as_posix()}"

        gif_url, sheet_url = url_of(result["gif"]), url_of(result["contact_sheet"])
        options = Options()
        options.binary_location = chrome
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        for arg in [*CHROME_ARGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(logs["chromedriver"])), options=options)
        driver.set_page_load_timeout(120)
        wait = WebDriverWait(driver, 90, poll_frequency=0.5)
        statuses: dict = {}

        driver.get(f"{ui}/runs/flow-run/{good_id}")
        tab = wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//li[contains(@class, 'p-tab')][normalize-space(.)='Artifacts']")))
        tab.click()
        card = wait.until(ec.element_to_be_clickable(
            (By.XPATH, f"//*[normalize-space(text())='outputs-browser-cat-{hash16}']")))
        driver.save_screenshot(str(tmp_path / "run-artifacts.png"))
        card.click()
        gif = _loaded_image(driver, gif_url)
        sheet = _loaded_image(driver, sheet_url)
        driver.save_screenshot(str(tmp_path / "outputs-artifact.png"))
        assert (gif["width"], gif["height"]) == (64, 64), gif
        with Image.open(result["contact_sheet"]) as img:
            assert (sheet["width"], sheet["height"]) == img.size
        for path in result["frames"]:  # every frame has a thumbnail on the page
            _loaded_image(driver, url_of(path), timeout=30)
        _statuses(driver, statuses)
        assert statuses.get(gif_url) == 200 and statuses.get(sheet_url) == 200, statuses
        response = httpx.get(gif_url, timeout=10)
        assert response.status_code == 200 and response.content == Path(result["gif"]).read_bytes()

        # On the invalid run's page: its state message, no traceback
        driver.get(f"{ui}/runs/flow-run/{invalid_id}")
        try:  # its log (the Logs tab opens first) and the details show the message
            wait.until(lambda d: "Finished in state Failed" in d.find_element(By.TAG_NAME, "body").text)
        finally:
            driver.save_screenshot(str(tmp_path / "invalid-run.png"))
        page = driver.find_element(By.TAG_NAME, "body").text
        assert state["message"] in page and "Traceback" not in page, page

        # The run form. V1 draws frames.poses as a JSON box; each pose kind has its own section
        driver.get(f"{ui}/deployments/deployment/{dep['id']}/run")
        wait.until(ec.presence_of_element_located(
            (By.XPATH, "//*[normalize-space(text())='Pose source: driving video (Optional)']")))
        driver.find_element(By.XPATH, "//button[normalize-space(.)='Driving video']").click()
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[normalize-space(text())='Every Nth (Optional)']")))
        driver.save_screenshot(str(tmp_path / "form-v1.png"))
        # V2 draws frames.poses as a choice of the kinds, by their titles
        driver.get(f"{ui}/v2/deployments/deployment/{dep['id']}/run")
        wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//button[@role='tab'][normalize-space(.)='Pose source']"))).click()
        kinds = ["OpenPose JSON files", "Pose map images", "Driving video", "Pose of one picture", "Keyframes"]
        for kind in kinds:
            wait.until(ec.presence_of_element_located((By.XPATH, f"//button[@role='tab'][normalize-space(.)='{kind}']")))
        driver.find_element(By.XPATH, "(//button[@role='tab'][normalize-space(.)='Driving video'])[1]").click()
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[normalize-space(text())='Every Nth (Optional)']")))
        driver.save_screenshot(str(tmp_path / "form-v2.png"))
    finally:
        if driver is not None:
            driver.quit()
        for proc in reversed(procs):
            _stop(proc)
