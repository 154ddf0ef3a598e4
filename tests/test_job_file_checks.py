"""What a job file names is checked at validation, quickly and with a clear error.

- (4) YAML anchors/aliases: a "billion laughs" job file is refused before anything is expanded.
- (5) ``execution.dask_address``: only a real Dask scheduler is accepted; an HTTP server, a silent
  or babbling server gives an exit-2 error within seconds instead of a hang or a 3 EiB allocation.
- (8) Files a job names (LoRAs, detector weights, pictures, pose JSON): empty, truncated or of
  another format gives an exit-2 error naming the field, never a traceback.

Only loopback addresses; every server and loop here is bounded.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from flows.cli import EXIT_INVALID, main
from flows.job.dask_probe import dask_problem
from flows.job.files import JobFileError, apply_overrides, read_job_data
from conftest_jobs import base_job, dump_job, workdir  # noqa: F401 - workdir is a fixture

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "jobs"


def _cli(capsys, *args) -> tuple[int, str, float]:
    """(exit code, stderr, seconds) of an in-process CLI call."""
    start = time.monotonic()
    code = main([*args, "--no-progress"] if args[0] == "run" else list(args))
    elapsed = time.monotonic() - start
    return code, capsys.readouterr().err, elapsed


# ------------------------------------------------------------------------ (4) YAML alias bomb


def alias_bomb(path: Path, levels: int = 9, width: int = 9) -> Path:
    """'Billion laughs': ``levels`` lists of ``width`` aliases of the list before, 9**9 strings in all."""
    lines = ["source: {image: cat.png, prompt: a photo of a cat}", "model: {model: tiny}",
             "l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    lines.append(f"frames: {{prompts: *l{levels - 1}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


ALIAS_MESSAGE = "YAML anchors/aliases (&name / *name) are not supported"


def test_alias_bomb_is_refused_before_expansion(workdir, capsys):
    path = alias_bomb(workdir / "bomb.yaml")
    start = time.monotonic()
    with pytest.raises(JobFileError, match=re.escape(ALIAS_MESSAGE)):
        read_job_data(path)
    assert time.monotonic() - start < 5  # a guard against expansion, not a benchmark (it took 95-135 s)

    code, err, elapsed = _cli(capsys, "validate", str(path))
    assert code == EXIT_INVALID, err
    assert "invalid job" in err and ALIAS_MESSAGE in err and "line 3" in err, err
    assert "Traceback" not in err
    assert elapsed < 5, elapsed


def test_an_anchor_alone_is_refused_and_names_its_line(workdir):
    job = yaml.safe_dump(base_job(workdir / "out"))
    path = workdir / "job.yaml"
    path.write_text(job.replace("source:\n", "source: &src\n"))
    with pytest.raises(JobFileError, match=re.escape(ALIAS_MESSAGE) + ".*write the values out"):
        read_job_data(path)


@pytest.mark.parametrize("suffix, text", [(".yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"),
                                          (".json", '{"a": ' + "[" * 100000 + "]" * 100000 + "}")])
def test_deep_nesting_is_refused_not_a_recursion_error(workdir, capsys, suffix, text):
    path = workdir / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(JobFileError, match="nested more"):
        read_job_data(path)
    code, err, _ = _cli(capsys, "validate", str(path))
    assert code == EXIT_INVALID and "nested more" in err and "Traceback" not in err, err


def test_alias_in_a_set_override_is_never_expanded():
    """A ``--set`` value that does not parse as YAML is taken as text; aliases count as not YAML
    (a prompt may start with '*'), so a bomb on the command line is a harmless string."""
    bomb = "[&a [x, x], [*a, *a]]"
    assert apply_overrides({}, [f"frames.prompts={bomb}"]) == {"frames": {"prompts": bomb}}
    assert apply_overrides({}, ["frames.prompts=*sparkly* cat"]) == {"frames": {"prompts": "*sparkly* cat"}}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_job_files_use_no_anchors(path):
    assert isinstance(read_job_data(path), dict)


# ------------------------------------------------------------------ (5) Dask scheduler probe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server():
    """A plain HTTP server on a loopback port (what the Dask client read as a 3 EiB message)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def tcp_server(reply: bytes | None):
    """Accepts connections on a loopback port; sends ``reply`` to each (None: never a byte), and
    keeps them open until the test ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # the 0.1 s accept timeout: look at `stop` again
                continue
            held.append(conn)
            if reply is not None:
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def _dask_job(workdir: Path, address: str) -> Path:
    job = base_job(workdir / "out")
    job["execution"] = {"runner": "dask", "dask_address": address}
    return dump_job(workdir / "job.yaml", job)


def test_an_http_server_is_not_a_dask_scheduler(workdir, capsys):
    with http_server() as address:
        start = time.monotonic()
        problem = dask_problem(address)
        assert time.monotonic() - start < 10
        assert problem and "not a Dask scheduler" in problem, problem

        code, err, elapsed = _cli(capsys, "validate", str(_dask_job(workdir, address)))
        assert code == EXIT_INVALID, err
        assert "execution.dask_address" in err and "not a Dask scheduler" in err, err
        assert elapsed < 15, elapsed
        code, err, elapsed = _cli(capsys, "run", str(_dask_job(workdir, address)))
        assert code == EXIT_INVALID and "execution.dask_address" in err, err
        assert elapsed < 15, elapsed
    assert not (workdir / "out").exists()


def test_a_silent_server_times_out(capsys):
    with tcp_server(None) as address:
        start = time.monotonic()
        problem = dask_problem(address, timeout=2.0)
        elapsed = time.monotonic() - start
    assert problem and "not a Dask scheduler" in problem and "within 2 s" in problem, problem
    assert elapsed < 5, elapsed


@pytest.mark.parametrize("reply", [
    b"HTTP/1.0 400 Bad request\r\n\r\n",  # read as a little-endian length: 3.07 EiB
    struct.pack("<Q", 5) + b"short",  # a sane length, but not a frame list
    struct.pack("<QQQ", 24, 1, 8) + b"\xc1" * 8,  # well framed, not msgpack
    struct.pack("<QQQ", 24, 1, 8) + b"\x93\x01\x02\x03" + b"\x00" * 4,  # msgpack, but not a handshake
], ids=["http-reply", "no-frames", "not-msgpack", "not-a-dict"])
def test_a_babbling_server_is_refused(reply):
    with tcp_server(reply) as address:
        start = time.monotonic()
        problem = dask_problem(address, timeout=2.0)
        elapsed = time.monotonic() - start
    assert problem and "not a Dask scheduler" in problem, problem
    assert elapsed < 5, elapsed


def test_a_closed_port_is_refused_quickly():
    start = time.monotonic()
    problem = dask_problem(f"tcp://127.0.0.1:{_free_port()}")
    assert problem and "no Dask scheduler answers" in problem
    assert time.monotonic() - start < 5


@pytest.fixture(scope="module")
def dask_scheduler():
    """A real Dask scheduler (no workers) in this process, on a loopback port."""
    from distributed import LocalCluster

    # tcp, not inproc: the probe speaks to a socket
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", scheduler_port=0,
                      dashboard_address="127.0.0.1:0") as cluster:
        yield cluster


def test_a_real_dask_scheduler_is_accepted(dask_scheduler, workdir, capsys):
    address = dask_scheduler.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    start = time.monotonic()
    assert dask_problem(address) is None
    assert dask_problem(address.removeprefix("tcp://")) is None  # host:port alone means tcp
    assert time.monotonic() - start < 10
    code, err, _ = _cli(capsys, "validate", str(_dask_job(workdir, address)))
    assert code == 0, err


def test_the_schedulers_dashboard_port_is_refused(dask_scheduler):
    """The likely slip: the dashboard (HTTP, 8787) instead of the scheduler (8786)."""
    from urllib.parse import urlsplit

    port = urlsplit(dask_scheduler.dashboard_link).port
    problem = dask_problem(f"tcp://127.0.0.1:{port}")
    assert problem and "not a Dask scheduler" in problem, problem


# --------------------------------------------------------------- (8) files the job names


@pytest.fixture
def tiny_env(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("MASACTRL_TINY_DIR", str(tiny_checkpoint))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_lora_bytes(tmp_path_factory, tiny_checkpoint):
    from masactrl_engine.tiny.lora import make_tiny_lora

    return make_tiny_lora(tmp_path_factory.mktemp("lora") / "ok.safetensors", tiny_checkpoint).read_bytes()


def _safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def lora_empty(folder, good):
    (folder / "l.safetensors").write_bytes(b"")
    return "l.safetensors"


def lora_random_bytes(folder, good):
    (folder / "l.safetensors").write_bytes(os.urandom(4096))
    return "l.safetensors"


def lora_truncated(folder, good):
    (folder / "l.safetensors").write_bytes(good[: len(good) // 2])
    return "l.safetensors"


def lora_header_cut(folder, good):
    (folder / "l.safetensors").write_bytes(good[:40])
    return "l.safetensors"


def lora_png_renamed(folder, good):
    (folder / "l.safetensors").write_bytes((folder / "cat.png").read_bytes())
    return "l.safetensors"


def lora_json_not_a_header(folder, good):
    (folder / "l.safetensors").write_bytes(_safetensors([1, 2, 3], b""))  # type: ignore[arg-type]
    return "l.safetensors"


def lora_offsets_past_the_end(folder, good):
    header = {"unet.x.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    (folder / "l.safetensors").write_bytes(_safetensors(header, b"\x00" * 8))
    return "l.safetensors"


def lora_folder_with_a_bad_file(folder, good):
    (folder / "lora").mkdir()
    (folder / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"not a lora")
    return "lora"


def lora_wrong_family(folder, good):
    """Well-formed, but its modules are not the tiny SD 1.x UNet's (a LoRA for another model)."""
    import torch
    from safetensors.torch import save_file

    save_file({"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 1280),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(1280, 2)},
              str(folder / "l.safetensors"))
    return "l.safetensors"


LORA_CASES = [lora_empty, lora_random_bytes, lora_truncated, lora_header_cut, lora_png_renamed,
              lora_json_not_a_header, lora_offsets_past_the_end, lora_folder_with_a_bad_file, lora_wrong_family]
LORA_FIELD = re.compile(r"model\.loras(\.0\.path|\[0\])")


@pytest.mark.parametrize("make", LORA_CASES, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_lora_that_is_not_a_lora_is_one_clear_error(tiny_env, tiny_lora_bytes, workdir, capsys, make, command):
    job = base_job(workdir / "out")
    job["model"]["loras"] = [{"path": make(workdir, tiny_lora_bytes), "scale": 0.8}]
    code, err, _ = _cli(capsys, command, str(dump_job(workdir / "job.yaml", job)))
    assert code == EXIT_INVALID, err
    assert "invalid job" in err and LORA_FIELD.search(err), err
    assert "Traceback" not in err and "SafetensorError" not in err, err
    assert not (workdir / "out").exists()


def test_a_good_lora_still_validates(tiny_env, tiny_lora_bytes, workdir, capsys):
    (workdir / "ok.safetensors").write_bytes(tiny_lora_bytes)
    job = base_job(workdir / "out")
    job["model"]["loras"] = [{"path": "ok.safetensors", "scale": 0.8}]
    code, err, _ = _cli(capsys, "validate", str(dump_job(workdir / "job.yaml", job)))
    assert code == 0, err


def test_the_lora_header_check_never_reads_the_tensors(tiny_lora_bytes, tmp_path, monkeypatch):
    """Header only: a LoRA whose header claims a gigabyte of tensors is judged by its size alone."""
    from flows.job.checks import safetensors_problem

    good = tmp_path / "ok.safetensors"
    good.write_bytes(tiny_lora_bytes)
    assert safetensors_problem(good) is None
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("decoded the tensors"))
    header = {"w": {"dtype": "F32", "shape": [2**28], "data_offsets": [0, 2**30]}}
    big = tmp_path / "big.safetensors"
    big.write_bytes(_safetensors(header, b""))
    problem = safetensors_problem(big)
    assert problem and "truncated" in problem, problem


def test_detector_weights_for_quality_are_checked(tiny_env, workdir, capsys):
    weights = workdir / "annotators"
    weights.mkdir()
    job = base_job(workdir / "out")
    job["quality"] = {"detector": "openpose", "detector_dir": str(weights)}
    for content, expected in [(None, "no body_pose_model.pth"), (b"", "empty"),
                              (b"garbage" * 10, "not a PyTorch checkpoint")]:
        if content is not None:
            (weights / "body_pose_model.pth").write_bytes(content)
        code, err, _ = _cli(capsys, "validate", str(dump_job(workdir / "job.yaml", job)))
        assert code == EXIT_INVALID, err
        assert "quality.detector_dir" in err and expected in err and "Traceback" not in err, err


def test_detector_weights_for_poses_are_checked_by_their_header(tiny_env, workdir, capsys):
    """A truncated zip checkpoint is refused from its header, before the detector is loaded."""
    import torch

    weights = workdir / "annotators"
    weights.mkdir()
    torch.save({"conv1_1.weight": torch.zeros(4, 3, 3, 3)}, weights / "body_pose_model.pth")
    whole = (weights / "body_pose_model.pth").read_bytes()
    (weights / "body_pose_model.pth").write_bytes(whole[: len(whole) - 30])
    job = base_job(workdir / "out")
    job["model"]["controlnet"] = "tiny"
    job["frames"]["poses"] = {"kind": "image", "path": "cat.png", "detector": "openpose",
                              "detector_dir": str(weights)}
    code, err, _ = _cli(capsys, "validate", str(dump_job(workdir / "job.yaml", job)))
    assert code == EXIT_INVALID, err
    assert "frames.poses.detector_dir" in err and "not a PyTorch checkpoint" in err, err
    assert "Traceback" not in err


def test_torch_checkpoint_headers(tmp_path):
    """Both formats torch.save writes are accepted from their headers (zip since torch 1.6, and
    the legacy pickle stream of older checkpoints such as the published OpenPose weights)."""
    import torch

    from flows.job.checks import torch_checkpoint_problem

    torch.save({"w": torch.zeros(3)}, tmp_path / "zip.pth")
    torch.save({"w": torch.zeros(3)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch_checkpoint_problem(tmp_path / "zip.pth") is None
    assert torch_checkpoint_problem(tmp_path / "legacy.pth") is None
    (tmp_path / "cut.pth").write_bytes((tmp_path / "zip.pth").read_bytes()[:100])
    assert "not a PyTorch checkpoint" in torch_checkpoint_problem(tmp_path / "cut.pth")


def test_truncated_source_and_empty_pose_json_are_refused(tiny_env, workdir, capsys):
    """Refused before the header checks came; kept here beside the other file checks."""
    whole = (workdir / "cat.png").read_bytes()
    (workdir / "cut.png").write_bytes(whole[: len(whole) // 2])
    job = base_job(workdir / "out")
    job["source"]["image"] = "cut.png"
    code, err, _ = _cli(capsys, "validate", str(dump_job(workdir / "job.yaml", job)))
    assert code == EXIT_INVALID and "source.image" in err and "Traceback" not in err, err

    (workdir / "poses").mkdir()
    (workdir / "poses" / "p_0000.json").write_text("")
    job = base_job(workdir / "out")
    job["model"]["controlnet"] = "tiny"
    job["frames"]["poses"] = {"kind": "openpose_json", "path": "poses"}
    code, err, _ = _cli(capsys, "validate", str(dump_job(workdir / "job.yaml", job)))
    assert code == EXIT_INVALID and "frames.poses" in err and "malformed JSON" in err, err


def test_a_grid_list_with_aliases_is_refused_before_it_is_expanded():
    from flows.job.sweep_axes import SweepError, parse_grid

    bomb = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x]"] + ["*a"] * 8) + "]"
    start = time.monotonic()
    with pytest.raises(SweepError, match="anchors/aliases"):
        parse_grid([f"frames.prompts={bomb}"])
    assert time.monotonic() - start < 5
    assert parse_grid(["frames.prompts=*sparkly* cat,a dog"]) == {"frames.prompts": ["*sparkly* cat", "a dog"]}
