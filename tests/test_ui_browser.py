"""The animation in the Prefect UI, in a real browser.

A real ``prefect server start`` (UI on, ``PREFECT_UI_API_URL`` set for its port) and
``masactrl-animate serve`` (its media server on the output root; the runs it starts get
MASACTRL_MEDIA_URL/ROOT), then real jobs on the tiny model through the deployment:

- an invalid job created from the deployment as the UI form does: the run fails with the clean
  validation message as its state message and no traceback in its logs;
- a job that only planning refuses (2 prompts for the 8 walk poses), from the form: the same clean
  "Invalid job: frames.prompts: ..." failure, no traceback and no JobInputError anywhere in its logs;
  the same job through ``submit``: exit 2 naming the field, no flow run created;
- a tiny pose job (64x64, 3 steps, the 8 walk poses) through ``masactrl-animate submit``; while it
  runs, a second ``submit`` whose source picture is gone by the time the worker gets it: it prints
  the run's "Invalid job: source.image: ..." message, no traceback, exit 1;
- a longer job cancelled while it renders: its progress artifact counts the frames on disk and names
  the job, and its log never says "Finished in state Running()";
- a sweep from its deployment: the best cell downloads as a job file (``?download``: an attachment)
  that ``masactrl-animate validate`` accepts and that plans to the best cell's folder; the ranking
  table links every cell's GIF; the sweep's artifacts carry the job's name;
- headless Chromium on the finished run's Artifacts tab and outputs artifact: the GIF and the contact
  sheet load from the media server (HTTP 200 as the browser saw it, natural size > 0), every frame
  has a thumbnail, the tiny-model warning is on the page; the progress card links the GIF; the
  frames table links each frame and pose;
- the deployment's run form in both UIs: the pose kinds are a choice, not a JSON box;
- the metrics table: no ``mailto:`` link (``PCK@0.05`` stays text, on its page and on the run's
  Artifacts tab), labelled columns, rounded numbers, "—" for what was not measured.

Screenshots of each page are left in the test's temporary folder (``--basetemp`` to keep them).

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


def _artifact(api: str, key: str) -> dict | None:
    found = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}}, timeout=10).json()
    return found[0] if found else None


def _artifacts_of(api: str, run_id: str, kind: str | None = None) -> list[dict]:
    body: dict = {"artifacts": {"flow_run_id": {"any_": [run_id]}}}
    if kind:
        body["artifacts"]["type"] = {"any_": [kind]}
    return httpx.post(f"{api}/artifacts/filter", json=body, timeout=10).json()


def _runs_of(api: str, deployment_id: str) -> int:
    return httpx.post(f"{api}/flow_runs/count", json={"deployments": {"id": {"any_": [deployment_id]}}},
                      timeout=10).json()


_LINKS = "return Array.from(document.querySelectorAll('a')).map(a => a.href);"

WALK = ROOT / "examples" / "poses" / "walk"  # 8 OpenPose JSON files


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
    Image.fromarray(data.chelsea()).resize((96, 64)).save(jobs / "cat.png")
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

        def deployment(name):
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            return next((d for d in found if d["name"] == name), None)

        dep = _wait(lambda: deployment("animate"), 180, "the animate deployment", logs.values())
        sweep_dep = _wait(lambda: deployment("sweep"), 60, "the sweep deployment", logs.values())

        def create_run(deployment_id: str, parameters: dict) -> str:
            created = _post_when_available(f"{api}/deployments/{deployment_id}/create_flow_run",
                                           {"parameters": parameters})
            assert created.status_code == 201, created.text
            return created.json()["id"]

        def final_state(run_id: str, what: str, timeout: float = 300) -> dict:
            return _wait(lambda: _state(api, run_id).get("type") in FINAL and _state(api, run_id), timeout, what,
                         logs.values())

        def finished_logs(run_id: str, what: str) -> list[str]:
            return _wait(lambda: (found := _run_logs(api, run_id)) and
                         any(m.startswith(("Finished in state", "Stopped while running")) for m in found) and found,
                         60, what, logs.values())

        # 1. An invalid job created from the deployment, as the UI's run form does
        form_job = {"name": "no-source", "source": {"image": None, "prompt": ""}, "frames": {"prompts": ["a cat"]},
                    "model": {"model": "tiny"}, "output": {"folder": str(out_root / "invalid")}}
        invalid_id = create_run(dep["id"], {"job": form_job})  # the schema accepts it: the rule is cross-field
        state = final_state(invalid_id, "the invalid run", 180)
        assert state["type"] == "FAILED"
        assert state["message"] == ("Invalid job: source.image / source.prompt: give a source image, or a source "
                                    "prompt to generate one from")
        run_logs = finished_logs(invalid_id, "the invalid run's logs")
        assert state["message"] in run_logs
        assert not any("Traceback" in m for m in run_logs), run_logs
        assert not (out_root / "invalid").exists()

        # 1b. A job only planning refuses (2 prompts for 8 poses), from the form: the same clean failure
        counts_job = {"name": "two-for-eight", "source": {"image": str(jobs / "cat.png"), "prompt": "a photo of a cat"},
                      "frames": {"prompts": ["a cat sitting", "a cat standing"],
                                 "poses": {"kind": "openpose_json", "path": str(WALK)}},
                      "model": {"model": "tiny", "controlnet": "tiny"},
                      "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
                      "output": {"folder": str(out_root / "counts")}}
        counts_id = create_run(dep["id"], {"job": counts_job})
        counts_state = final_state(counts_id, "the 2-prompts-for-8-poses run", 180)
        assert counts_state["type"] == "FAILED"
        assert counts_state["message"] == ("Invalid job: frames.prompts: 2 prompts for 8 poses; give one prompt per "
                                           "pose, or a single prompt for all of them")
        counts_logs = finished_logs(counts_id, "the 2-prompts-for-8-poses run's logs")
        assert counts_state["message"] in counts_logs
        assert not any(word in m for m in counts_logs
                       for word in ("Traceback", "JobInputError", "Engine execution exited")), counts_logs
        assert not (out_root / "counts").exists()
        # ... and through submit: refused before anything reaches the server
        (jobs / "counts.yaml").write_text(yaml.safe_dump(counts_job))
        before = _runs_of(api, dep["id"])
        refused = subprocess.run([str(BIN / "masactrl-animate"), "submit", str(jobs / "counts.yaml"), "--no-wait"],
                                 env=client_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stderr
        assert "invalid job\n  frames.prompts: 2 prompts for 8 poses" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and _runs_of(api, dep["id"]) == before

        # 2. A real tiny pose job through submit; a second one whose picture is gone when it runs
        shutil.copy(jobs / "cat.png", jobs / "gone.png")
        job = {"name": "browser-cat", "source": {"image": "cat.png", "prompt": "a photo of a cat"},
               "frames": {"prompts": ["a photo of a cat walking"],
                          "poses": {"kind": "openpose_json", "path": str(WALK)}},
               "model": {"model": "tiny", "controlnet": "tiny"},
               "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
               "output": {"folder": str(out_root), "fps": 5}, "execution": {"chunk_size": 4}}
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
        assert result["frame_count"] == 8 and result["frames_rendered"] == 8
        assert gone.wait(300) == 1, gone_err.read_text()[-3000:]
        printed = gone_err.read_text()
        assert re.search(rf"flow run {gone_id} ended Failed: Invalid job: source\.image: .*gone\.png", printed), printed
        assert "Traceback" not in printed, printed
        assert _state(api, gone_id)["message"].startswith("Invalid job: source.image: ")
        assert not any("Traceback" in m for m in _run_logs(api, gone_id))

        job_dir = Path(result["job_dir"])
        hash16 = job_dir.name[:16]

        def url_of(path) -> str:
            return f"{media}/{Path(path).relative_to(out_root).as_posix()}"

        gif_url, sheet_url = url_of(result["gif"]), url_of(result["contact_sheet"])
        # the progress card links the animation first
        progress = _artifact(api, f"progress-browser-cat-{hash16}")
        assert progress["description"].startswith(f"[Open the animation (GIF)]({gif_url}) · Frames of job browser-cat")

        # 3. A longer job, cancelled while it renders: the progress counts what is on disk
        cancel_job = {"name": "cancel-cat", "source": {"image": str(jobs / "cat.png"), "prompt": "a photo of a cat"},
                      "frames": {"prompts": [f"a photo of a cat, take {i}" for i in range(16)]},
                      "model": {"model": "tiny"}, "settings": {"width": 128, "height": 128, "steps": 30,
                                                               "start_step": 1},
                      "output": {"folder": str(out_root)}, "execution": {"chunk_size": 2}}
        cancel_id = create_run(dep["id"], {"job": cancel_job})

        def started_frames():
            found = _artifacts_of(api, cancel_id, "progress")
            return found and float(found[0]["data"] or 0) > 0 and found[0]

        cancel_progress = _wait(started_frames, 300, "the long job's first frames", logs.values())
        cancelling = httpx.post(f"{api}/flow_runs/{cancel_id}/set_state",
                                json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}, timeout=10)
        assert cancelling.status_code in (200, 201), cancelling.text
        assert final_state(cancel_id, "the cancelled run", 180)["type"] == "CANCELLED"
        cancel_hash = cancel_progress["key"].rsplit("-", 1)[-1]
        cancelled = _wait(lambda: (a := _artifact(api, cancel_progress["key"])) and "cancelled" in a["description"]
                          and a, 120, "the cancelled progress", logs.values())
        on_disk = len(list((out_root / cancel_hash / "frames").glob("frame_*.png")))
        assert 0 < on_disk <= 16
        assert cancelled["description"].startswith(f"Frames of job cancel-cat ({cancel_hash}): ")
        assert f"({on_disk}/16 frames), cancelled" in cancelled["description"], (on_disk, cancelled)
        assert abs(float(cancelled["data"]) - 100.0 * on_disk / 16) < 1e-6
        cancel_logs = _run_logs(api, cancel_id)
        assert "Finished in state Running()" not in cancel_logs, cancel_logs

        # 4. A sweep from its deployment: the best cell as a job file, every cell's GIF linked
        sweep_job = {"name": "sweep-cat", "source": {"image": str(jobs / "cat.png"), "prompt": "a photo of a cat"},
                     "frames": {"prompts": ["a photo of a cat sitting", "a photo of a cat standing",
                                            "a photo of a cat jumping"]},
                     "model": {"model": "tiny"}, "settings": {"width": 64, "height": 64, "steps": 3, "start_step": 1},
                     "output": {"folder": str(out_root)}, "execution": {"chunk_size": 2}}
        sweep_id = create_run(sweep_dep["id"], {"job": sweep_job, "grid": {"settings.start_step": [1, 2]},
                                                "frames": [0, 2]})
        sweep_state = final_state(sweep_id, "the sweep", 400)
        assert sweep_state["type"] == "COMPLETED", sweep_state
        sweep_keys = {a["key"] for a in _artifacts_of(api, sweep_id)}
        sweep_hash = next(k for k in sweep_keys if k.startswith("sweep-progress-")).rsplit("-", 1)[-1]
        assert {f"sweep-progress-sweep-cat-{sweep_hash}", f"sweep-ranking-sweep-cat-{sweep_hash}",
                f"sweep-sweep-cat-{sweep_hash}"} <= sweep_keys, sweep_keys
        sweep_progress = _artifact(api, f"sweep-progress-sweep-cat-{sweep_hash}")
        assert sweep_progress["description"] == f"Frames of sweep sweep-cat ({sweep_hash}): 100% (4/4 frames), done"

        # In the browser
        options = Options()
        options.binary_location = chrome
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        for arg in [*CHROME_ARGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(chromedriver, log_output=str(logs["chromedriver"])), options=options)
        driver.set_page_load_timeout(120)
        wait = WebDriverWait(driver, 90, poll_frequency=0.5)
        statuses: dict = {}

        def body_text() -> str:
            return driver.find_element(By.TAG_NAME, "body").text

        def open_artifact(key: str, shot: str, until) -> None:
            driver.get(f"{ui}/artifacts/artifact/{_artifact(api, key)['id']}")
            try:
                wait.until(until)
            finally:
                driver.save_screenshot(str(tmp_path / shot))

        # the run's Artifacts tab, then its outputs page: the animation from the media server
        driver.get(f"{ui}/runs/flow-run/{good_id}")
        tab = wait.until(ec.element_to_be_clickable(
            (By.XPATH, "//li[contains(@class, 'p-tab')][normalize-space(.)='Artifacts']")))
        tab.click()
        card = wait.until(ec.element_to_be_clickable(
            (By.XPATH, f"//*[normalize-space(text())='outputs-browser-cat-{hash16}']")))
        driver.save_screenshot(str(tmp_path / "run-artifacts.png"))
        artifacts_tab = body_text()
        card.click()
        gif = _loaded_image(driver, gif_url)
        sheet = _loaded_image(driver, sheet_url)
        driver.save_screenshot(str(tmp_path / "outputs-artifact.png"))
        assert (gif["width"], gif["height"]) == (64, 64), gif
        with Image.open(result["contact_sheet"]) as img:
            assert (sheet["width"], sheet["height"]) == img.size
        for path in result["frames"]:  # every frame has a thumbnail on the page
            _loaded_image(driver, url_of(path), timeout=30)
        assert "random weights" in body_text()  # the tiny model's warning, not only in the logs
        _statuses(driver, statuses)
        assert statuses.get(gif_url) == 200 and statuses.get(sheet_url) == 200, statuses
        response = httpx.get(gif_url, timeout=10)
        assert response.status_code == 200 and response.content == Path(result["gif"]).read_bytes()

        # the frames table: each frame and each pose is a link
        open_artifact(f"frames-browser-cat-{hash16}", "frames-table.png",
                      lambda d: url_of(job_dir / "poses" / "pose_0000.png") in d.execute_script(_LINKS))
        links = driver.execute_script(_LINKS)
        assert url_of(result["frames"][0]) in links and url_of(job_dir / "poses" / "pose_0007.png") in links

        # the invalid runs' pages: their state message, no traceback
        for run_id, message, shot in ((invalid_id, state["message"], "invalid-run.png"),
                                      (counts_id, counts_state["message"], "invalid-counts-run.png")):
            driver.get(f"{ui}/runs/flow-run/{run_id}")
            try:  # its log (the Logs tab opens first) and the details show the message
                wait.until(lambda d: "Finished in state Failed" in body_text())
            finally:
                driver.save_screenshot(str(tmp_path / shot))
            page = body_text()
            assert message in page and "Traceback" not in page and "JobInputError" not in page, page

        # the cancelled run's page
        driver.get(f"{ui}/runs/flow-run/{cancel_id}")
        wait.until(lambda d: "Cancelled" in body_text())
        driver.save_screenshot(str(tmp_path / "cancelled-run.png"))
        assert "Finished in state Running()" not in body_text()

        # the sweep: its page links the best cell's job file, which downloads and validates
        open_artifact(f"sweep-sweep-cat-{sweep_hash}", "sweep-artifact.png",
                      lambda d: any(h.endswith("best_job.yaml?download") for h in d.execute_script(_LINKS)))
        download = next(h for h in driver.execute_script(_LINKS) if h.endswith("best_job.yaml?download"))
        assert "masactrl-animate run " in body_text() and "masactrl-animate submit " in body_text()
        got = httpx.get(download, timeout=10)
        assert got.status_code == 200 and got.headers["content-disposition"].startswith("attachment"), got.headers
        (tmp_path / "downloaded").mkdir()
        best_file = tmp_path / "downloaded" / "best_job.yaml"
        best_file.write_bytes(got.content)
        checked = subprocess.run([str(BIN / "masactrl-animate"), "validate", str(best_file)], env=client_env,
                                 cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert checked.returncode == 0, checked.stderr
        ranking = json.loads((out_root / "sweeps" / sweep_hash / "ranking.json").read_text())
        best = ranking["cells"][ranking["best_cell"]]
        assert checked.stdout.strip().endswith(f"-> {best['job_dir']}"), checked.stdout
        # the ranking table links every cell's GIF, and each one loads
        open_artifact(f"sweep-ranking-sweep-cat-{sweep_hash}", "sweep-ranking.png",
                      lambda d: url_of(ranking["cells"][0]["gif"]) in d.execute_script(_LINKS))
        links = driver.execute_script(_LINKS)
        for cell in ranking["cells"]:
            assert url_of(cell["gif"]) in links
            assert httpx.get(url_of(cell["gif"]), timeout=10).status_code == 200

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

        # The metrics table: PCK@0.05 is text, not a mailto: link; labelled, rounded columns
        assert "PCK@0.05" in artifacts_tab, artifacts_tab  # the run's Artifacts tab card keeps the text
        open_artifact(f"metrics-browser-cat-{hash16}", "metrics-artifact.png",
                      lambda d: "Frame" in body_text() and "PCK@0.05" in body_text())
        page = body_text()
        assert not [h for h in driver.execute_script(_LINKS) if h.startswith("mailto:")], driver.execute_script(_LINKS)
        assert "Colour dist. (Lab)" in page and "lower = closer" in page and "appearance_bhattacharyya" not in page
        assert not re.search(r"\d\.\d{5,}", page), page  # rounded
        assert url_of(job_dir / "metrics.json") in driver.execute_script(_LINKS)  # full precision, one click away
    finally:
        if driver is not None:
            driver.quit()
        for proc in reversed(procs):
            _stop(proc)
