"""A corpus of bad inputs. Each one is a single clear error naming the field,
exit 2 from `validate` and from `run`, before any work, with nothing written."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from flows.job import checks as inputs
from flows.cli import EXIT_INVALID, main
import conftest_jobs
from conftest_jobs import dump_job, workdir  # noqa: F401 - workdir is a fixture


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 20000) -> None:
    """A tiny file whose header claims side x side pixels (valid CRCs)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def corrupt_zlib_png(path: Path) -> None:
    """A 64x64 PNG whose IDAT zlib stream is garbage but whose CRCs are all valid."""
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    good = zlib.compress(b"".join(b"\x00" + bytes(range(64)) * 3 for _ in range(64)))
    bad = good[:2] + bytes((b ^ 0x5A) for b in good[2:])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", bad)
                     + _png_chunk(b"IEND", b""))


def base_job(out: Path) -> dict:
    return conftest_jobs.base_job(out, ("a photo of a cat sitting", "a photo of a cat jumping"))


def case_duplicate_key(folder, out):
    text = yaml.safe_dump(base_job(out)).replace("  fps: 8.0\n", "")
    text = text.replace("output:\n", "output:\n  fps: 8\n  fps: 12\n")
    (folder / "job.yaml").write_text(text)
    return folder / "job.yaml", "output.fps"


def case_bool_int(folder, out):
    job = base_job(out)
    job["settings"]["steps"] = True
    return dump_job(folder / "job.yaml", job), "settings.steps"


def case_bool_chunk(folder, out):
    job = base_job(out)
    job["execution"] = {"chunk_size": True}
    return dump_job(folder / "job.yaml", job), "execution.chunk_size"


def case_bomb(folder, out):
    bomb_png(folder / "bomb.png")
    job = base_job(out)
    job["source"]["image"] = "bomb.png"
    return dump_job(folder / "job.yaml", job), "source.image"


def case_too_big(folder, out):
    bomb_png(folder / "big.png", side=9500)
    job = base_job(out)
    job["source"]["image"] = "big.png"
    return dump_job(folder / "job.yaml", job), "source.image"


def case_long_path(folder, out):
    job = base_job(out)
    job["source"]["image"] = "/".join(["d" * 200] * 25) + "/cat.png"
    return dump_job(folder / "job.yaml", job), "source.image"


def case_corrupt_zlib(folder, out):
    # Validation reads headers only and passes this file (its chunks and checksums are whole): only
    # decoding finds the garbage. The CLI decodes the source once after the plan, before Prefect
    # starts or anything is written, so `validate` and `run` still refuse it, naming source.image.
    corrupt_zlib_png(folder / "broken.png")
    with Image.open(folder / "broken.png") as img:
        img.verify()  # checks the chunks' CRCs: passes
    job = base_job(out)
    job["source"]["image"] = "broken.png"
    return dump_job(folder / "job.yaml", job), "source.image"


def case_root_glob(folder, out):
    job = base_job(out)
    job["frames"] = {"prompts": ["a photo of a cat"], "poses": {"kind": "images", "source": "/**/*.png"}}
    job["model"]["controlnet"] = "tiny"
    return dump_job(folder / "job.yaml", job), "frames.poses"


def case_huge_pose_coordinates(folder, out):
    import json

    (folder / "poses").mkdir()
    keypoints = []
    for i in range(18):
        keypoints += [1e30 * (i + 1), 5e29, 1.0]
    (folder / "poses" / "p_0000.json").write_text(json.dumps(
        {"people": [{"pose_keypoints_2d": keypoints}], "canvas_width": 64, "canvas_height": 64}))
    job = base_job(out)
    job["frames"] = {"prompts": ["a photo of a cat"], "poses": {"kind": "openpose_json", "path": "poses"}}
    job["model"]["controlnet"] = "tiny"
    return dump_job(folder / "job.yaml", job), "frames.poses"


def case_cuda(folder, out):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: 'device: cuda' is valid here")
    job = base_job(out)
    job["model"]["device"] = "cuda"
    return dump_job(folder / "job.yaml", job), "model.device"


def case_dask_unreachable(folder, out):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = base_job(out)
    job["execution"] = {"runner": "dask", "dask_address": f"tcp://127.0.0.1:{port}"}
    return dump_job(folder / "job.yaml", job), "execution.dask_address"


def case_output_not_writable(folder, out):
    job = base_job(out)
    job["output"]["folder"] = "/proc/masactrl-out"  # not writable, not even by root
    return dump_job(folder / "job.yaml", job), "output.folder"


def case_offline_hub(folder, out, monkeypatch=None):
    job = base_job(out)
    job["model"]["model"] = "nobody-here/no-such-model"
    return dump_job(folder / "job.yaml", job), "model.model"


def case_refused_prompt_operator(folder, out):
    """A compel operator the engine does not apply (``.swap``) in a frame prompt."""
    job = base_job(out)
    job["frames"]["prompts"][1] = "a photo of a cat.swap(dog)"
    return dump_job(folder / "job.yaml", job), "frames.prompts[1]"


CASES = [case_duplicate_key, case_bool_int, case_bool_chunk, case_bomb, case_too_big, case_long_path,
         case_corrupt_zlib, case_root_glob, case_huge_pose_coordinates, case_cuda, case_dask_unreachable, case_output_not_writable,
         case_offline_hub, case_refused_prompt_operator]


def _snapshot(folder: Path):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__[5:])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_input_is_one_clear_error_exit_2_nothing_written(workdir, tmp_path, capsys, monkeypatch, make, command):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("do not touch")
    path, field = make(workdir, out)
    before = _snapshot(out), _snapshot(workdir)
    code = main([command, str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_INVALID, err
    assert "invalid job" in err and field in err, err
    assert "Traceback" not in err
    assert (_snapshot(out), _snapshot(workdir)) == before


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    """Pillow clips 'I;16' at 255 when converting to RGB (a 16-bit picture comes out white)."""
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
        clipped = np.asarray(img.convert("RGB"))
    assert (clipped == 255).mean() > 0.95  # the fault
    rgb = np.asarray(inputs.open_image(path))
    assert rgb.shape == (64, 64, 3)
    expected = np.rint(ramp / 257.0)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01
    # pose map images go through the same conversion (pose_sources.images.open_rgb)
    from pose_sources.images import open_rgb

    assert np.array_equal(np.asarray(open_rgb(path)), rgb)


def test_validation_reads_headers_only_and_leaves_pillows_limit_alone(workdir, tmp_path, monkeypatch):
    """Validating a job decodes no pixel (it runs on every validation: CLI, flow, each sweep cell)
    and never changes the process-wide Image.MAX_IMAGE_PIXELS (other threads read it)."""
    from PIL import ImageFile

    from flows.job.model import AnimationJob

    corrupt_zlib_png(workdir / "broken.png")
    bomb_png(workdir / "bomb.png")  # 400 MP: Pillow's own check raises in open()
    bomb_png(workdir / "big.png", side=9000)  # 81 MP: under Pillow's limit, over ours
    limits, decodes = [], []
    real_open, real_load = Image.open, ImageFile.ImageFile.load

    def spy_open(*args, **kwargs):
        limits.append(Image.MAX_IMAGE_PIXELS)
        return real_open(*args, **kwargs)

    def spy_load(self):
        decodes.append(self.filename)
        return real_load(self)

    monkeypatch.setattr(Image, "open", spy_open)
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    default = Image.MAX_IMAGE_PIXELS
    job = base_job(tmp_path / "out")
    for name in ("cat.png", "broken.png"):
        job["source"]["image"] = str(workdir / name)
        AnimationJob.model_validate(job)
    assert decodes == [] and limits == [default, default]
    for name, size in (("bomb.png", "400 MP"), ("big.png", "81 MP")):
        job["source"]["image"] = str(workdir / name)
        with pytest.raises(ValueError, match=f"{size}, more than the limit of 67 MP"):
            AnimationJob.model_validate(job)
    assert Image.MAX_IMAGE_PIXELS == default and set(limits) == {default}

    # Decoding, where the pixels are used, finds the corrupt data and says which file.
    with pytest.raises(inputs.ImageProblem, match="broken.png.*not a readable image"):
        inputs.open_image(workdir / "broken.png")
    assert decodes


def test_good_job_still_validates(workdir, tmp_path, capsys):
    path = dump_job(workdir / "job.yaml", base_job(tmp_path / "out"))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_roots_confine_inputs_and_outputs_when_set(workdir, tmp_path, capsys, monkeypatch, command):
    """With MASACTRL_INPUT_ROOTS / MASACTRL_OUTPUT_ROOT set (as for server-triggered runs), a
    source outside the input roots and an output folder outside the output root are refused."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (workdir / "cat.png").rename(outside / "cat.png")
    (workdir / "link.png").symlink_to(outside / "cat.png")  # a symlink out of the root does not count
    job = base_job(tmp_path / "out")
    job["source"]["image"] = "link.png"
    path = dump_job(workdir / "job.yaml", job)
    monkeypatch.setenv("MASACTRL_INPUT_ROOTS", f"{tmp_path / 'nowhere'}{os.pathsep}{workdir}")
    monkeypatch.setenv("MASACTRL_OUTPUT_ROOT", str(tmp_path / "results"))
    assert main([command, str(path), "--no-progress"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "source.image" in err and "outside the input folders" in err
    assert "output.folder" in err and "outside the output root" in err
    assert not (tmp_path / "out").exists()

    # Inside the roots: accepted; unset: today's freedom.
    (outside / "cat.png").rename(workdir / "inside.png")
    job["source"]["image"] = "inside.png"
    job["output"]["folder"] = str(tmp_path / "results" / "job1")
    path = dump_job(workdir / "job.yaml", job)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    monkeypatch.delenv("MASACTRL_INPUT_ROOTS")
    monkeypatch.delenv("MASACTRL_OUTPUT_ROOT")
    job["output"]["folder"] = str(tmp_path / "anywhere")
    assert main(["validate", str(dump_job(workdir / "job.yaml", job))]) == 0
