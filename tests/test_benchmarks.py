"""The benchmark scripts run end to end in their CI size, so they cannot rot. Timings are never
asserted; the UNet-call and UNet-sample counts they print are (they are exact), and so is the
agreement of the two schedules' frames (the benchmark compares the same job computed two ways)."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is not an installed package; it lives at the root
    sys.path.insert(0, str(ROOT))
ROW = re.compile(r"^\s*(\d+)\s+(published|ours|floor|renoise|anchor)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+|-)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s+([\d.]+)x")


def _run(module: str, *args: str, cache: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MASACTRL_BENCH_CACHE=str(cache))
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _rows(stdout: str) -> dict[tuple[int, str], tuple[int, int, str]]:
    rows = {}
    for line in stdout.splitlines():
        if match := ROW.match(line):
            n, schedule, calls, samples, _, text_calls, *_ = match.groups()
            rows[(int(n), schedule)] = (int(calls), int(samples), text_calls)
    return rows


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


def test_frames_quick_prints_exact_counts(cache):
    out = _run("benchmarks.frames", "--quick", cache=cache)
    T, S, B = 3, 1, 2  # --quick: 3 steps, start step 1, batches of 2 frames
    rows = _rows(out)
    assert sorted(rows) == [(n, s) for n in (1, 3) for s in ("anchor", "floor", "ours", "published", "renoise")]
    k = round((1 - 0.6) * T)  # renoise at strength 0.6 skips the first k = 1 steps
    for n in (1, 3):
        # published: per frame T inversion calls of a CFG pair (as the published code) + T calls of 4 samples
        assert rows[(n, "published")] == (n * 2 * T, n * (2 * T + 4 * T), str(n * 4))
        # ours: T inversion samples once, T-S source CFG pairs once, N*T frame CFG pairs in ceil(N/B) batches
        assert rows[(n, "ours")] == (T + (T - S) + math.ceil(n / B) * T, T + 2 * (T - S) + 2 * n * T, str(n + 2))
        assert rows[(n, "floor")] == (math.ceil(n / B) * T, 2 * n * T, "-")
        # renoise: inversion and source branch as ours, frames only T - k steps
        assert rows[(n, "renoise")] == (T + (T - S) + math.ceil(n / B) * (T - k),
                                        T + 2 * (T - S) + 2 * n * (T - k), str(n + 2))
        # anchor: frame 0 alone first (T CFG pairs), the other N - 1 frames in batches
        assert rows[(n, "anchor")] == (T + (T - S) + T + math.ceil((n - 1) / B) * T,
                                       T + 2 * (T - S) + 2 * n * T, str(n + 2))
    assert "published/this" in out and "N=3: published/ours per frame" in out
    difference = float(re.search(r"max \|ours - published\| over the latents of 3 frame\(s\): (\S+)", out).group(1))
    assert difference < 1e-3  # the same frames, computed two ways


def test_frames_single_sample_inversion_and_batch_of_one(cache, capsys):
    """In process, with the other published inversion (guidance 1) and one frame per batch."""
    from benchmarks import frames

    argv = ["--quick", "--frames", "2", "--batch-size", "1", "--published-inversion", "single", "--no-warmup",
            "--cache-dir", str(cache)]
    rows = {row["schedule"]: row for row in frames.main(argv)}
    T, S = 3, 1
    assert (rows["published"]["unet_calls"], rows["published"]["unet_samples"]) == (2 * 2 * T, 2 * (T + 4 * T))
    assert rows["published"]["text_encoder_calls"] == 2 * 3
    assert (rows["ours"]["unet_calls"], rows["ours"]["unet_samples"]) == (T + (T - S) + 2 * T, T + 2 * (T - S) + 4 * T)
    assert (rows["floor"]["unet_calls"], rows["floor"]["unet_samples"]) == (2 * T, 4 * T)
    assert rows["ours"]["sample_ratio"] == pytest.approx(30 / 19)  # published 2 x 15 samples, ours 3 + 4 + 12
    # renoise (k = 1): frames 2 x 2 CFG pairs; anchor: frame 0 alone (3 pairs), then frame 1 (3 pairs)
    assert (rows["renoise"]["unet_calls"], rows["renoise"]["unet_samples"]) == (3 + 2 + 2 * 2, 3 + 4 + 2 * 2 * 2)
    assert (rows["anchor"]["unet_calls"], rows["anchor"]["unet_samples"]) == (3 + 2 + 3 + 3, 3 + 4 + 2 * 2 * 3)
    printed = _rows(capsys.readouterr().out)
    assert printed[(2, "ours")] == (rows["ours"]["unet_calls"], rows["ours"]["unet_samples"], "4")


def test_frames_rejects_bad_settings(cache):
    from benchmarks import frames

    with pytest.raises(SystemExit, match="start-step"):
        frames.main(["--quick", "--start-step", "3", "--cache-dir", str(cache)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            frames.main(["--quick", "--device", "cuda", "--cache-dir", str(cache)])


def test_attention_quick_runs_and_agrees(cache):
    out = _run("benchmarks.attention", "--quick", cache=cache)
    assert re.search(r"^sdpa\s+[\d.]+\s+\S+$", out, re.M) and re.search(r"^explicit\s+[\d.]+\s+\S+$", out, re.M)
    assert "16x16 = 256 tokens" in out and "1 source + 2 frames" in out
    difference = float(re.search(r"max \|sdpa - explicit\| = (\S+)", out).group(1))
    assert difference < 1e-4


def test_published_schedule_counts_attention_like_the_reference(tiny_pipe, monkeypatch):
    """The benchmark's published attention counts two calls per transformer block and one step
    per UNet call, and the UNet gets its own processors back afterwards."""
    from PIL import Image

    from benchmarks import published

    made = []

    class Spy(published.PublishedAttention):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(published, "PublishedAttention", Spy)
    schedule = published.PublishedSchedule(tiny_pipe, num_steps=2, start_step=1, start_layer=10)
    before = {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()}
    schedule.frame(Image.new("RGB", (64, 64), (120, 80, 40)), "a photo of a cat", "a cat jumping")
    assert len(made) == 1 and made[0].num_att_layers == 32  # 16 transformer blocks x (self, cross)
    assert (made[0].cur_step, made[0].cur_att_layer) == (2, 0)  # two UNet calls, each fully counted
    assert {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()} == before


def test_source_branch_benchmark_counts_one_branch_per_sweep(tmp_path):
    """Four cells over anchor weight x ControlNet scale (T=3, S=1): keyed by the whole config, each
    cell computes the branch (2(T-S) = 4 source samples); shared, the first cell alone does."""
    out = _run("benchmarks.source_branch", "--quick", cache=tmp_path)
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(per-config|shared)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+$", out, re.M)}
    assert rows["per-config"][1] == 4.0 and rows["shared"][1] == 1.0
    assert rows["per-config"][0] - rows["shared"][0] == 3.0
    assert "shared/per-config: UNet samples" in out
