"""What the flow publishes (flows/ui/artifacts.py), without a Prefect server."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows.jobdir.layout import folder_name
from flows.quality.report import FrameMetrics, JobMetrics, MetricsSummary, PairMetrics, metrics_table
from flows.ui.artifacts import (
    artifact_key,
    frame_table,
    job_hash_of_key,
    md_text,
    metrics_description,
    outputs_markdown,
    progress_description,
    progress_percent,
    slugify,
)

HASH = "0123456789abcdef" + "f" * 48
KEY_RE = re.compile(r"^[a-z0-9-]+$")  # what Prefect accepts as an artifact key


@pytest.fixture
def no_media(monkeypatch):
    for var in ("MASACTRL_MEDIA_URL", "MASACTRL_MEDIA_ROOT", "MASACTRL_OUTPUT_ROOT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def media(monkeypatch, no_media):
    monkeypatch.setenv("MASACTRL_MEDIA_URL", "http://media.test:4300")


@pytest.mark.parametrize(("name", "expected"), [
    (None, "outputs-0123456789abcdef"),
    ("cat", "outputs-cat-0123456789abcdef"),
    ("My_Cat.v2", "outputs-my-cat-v2-0123456789abcdef"),
    ("--Odd__name..", "outputs-odd-name-0123456789abcdef"),
    ("x" * 64, "outputs-" + "x" * 40 + "-0123456789abcdef"),
    ("___", "outputs-0123456789abcdef"),
])
def test_keys_carry_the_job_name_and_hash(name, expected):
    key = artifact_key("outputs", HASH, name)
    assert key == expected and KEY_RE.match(key)
    assert job_hash_of_key(key) == folder_name(HASH)


def test_slugify():
    assert slugify("Hello, World!") == "hello-world"
    assert slugify(None) == "" and slugify("") == ""
    assert slugify("a" * 39 + "-b") == "a" * 39  # no dash left at the cut


def test_progress_text():
    assert progress_percent(0, 0) == 100.0 and progress_percent(3, 12) == 25.0 and progress_percent(20, 10) == 100.0
    running = progress_description(3, 12, HASH, "cat")
    assert running == "Frames of job cat (0123456789abcdef): 25% (3/12 frames)"
    assert progress_description(12, 12, HASH, status="done").endswith("100% (12/12 frames), done")
    cancelled = progress_description(5, 12, HASH, status="cancelled")
    assert "42% (5/12 frames)" in cancelled and "cancelled" in cancelled
    failed = progress_description(4, 12, HASH, status="failed", failed_chunk=1, chunk_count=3)
    assert "33% (4/12 frames)" in failed and "failed at chunk 2 of 3" in failed
    assert "failed at chunk" not in progress_description(4, 12, HASH, status="failed")
    assert "failed" in progress_description(4, 12, HASH, status="failed")
    # a finished job's progress card links its animation first
    done = progress_description(12, 12, HASH, "cat", status="done", gif_url="http://m/x/animation.gif")
    assert done.startswith("[Open the animation (GIF)](http://m/x/animation.gif) · Frames of job cat")
    assert done.endswith("100% (12/12 frames), done")


def test_markdown_text_is_never_a_link():
    """Prefect's UI renders descriptions and cells as markdown: an '@' made PCK@0.05 a mailto: link."""
    import markdown_it

    md = markdown_it.MarkdownIt("gfm-like") if _has_linkify() else markdown_it.MarkdownIt("commonmark")
    for text in ("PCK@0.05 0.75", "see www.example.com or http://example.com/x", "a [b](c) `d` *e* | f <i>x</i>"):
        escaped = md_text(text)
        html = md.render(escaped)
        assert "<a " not in html and "<i>" not in html and "<code>" not in html and "<em>" not in html, html
    assert md_text("PCK@0.05") == "PCK\\@0.05" and md_text("frame_0001.png") == "frame_0001.png"


def _has_linkify() -> bool:
    try:
        import linkify_it  # noqa: F401
    except ImportError:
        return False
    return True


def _result(job_dir: Path, **extra) -> dict:
    out = {
        "gif": str(job_dir / "animation.gif"), "mp4": str(job_dir / "animation.mp4"),
        "contact_sheet": str(job_dir / "contact_sheet.png"),
    }
    return {
        "job_hash": HASH, "job_dir": str(job_dir), "frame_count": 4, "frames_rendered": 3, "frames_skipped": 1,
        "inversion_cached": False, "side_by_side": None, "outputs": out, "timings": {"render": 1.234},
        "unet_calls": {"frame_calls": 8}, **out,
        "frames": [str(job_dir / "frames" / f"frame_{i:04d}.png") for i in range(4)], **extra,
    }


def test_outputs_markdown_shows_the_animation_inline(media, tmp_path):
    job_dir = tmp_path / "out" / folder_name(HASH)
    text = outputs_markdown(_result(job_dir, job_name="cat"))
    assert text.startswith("# Animation cat (0123456789abcdef)")
    assert f"![animation](http://media.test:4300/{folder_name(HASH)}/animation.gif)" in text
    assert f"![contact sheet](http://media.test:4300/{folder_name(HASH)}/contact_sheet.png)" in text
    assert f"[{job_dir / 'animation.mp4'}](http://media.test:4300/{folder_name(HASH)}/animation.mp4)" in text
    assert "3 rendered now, 1 already on disk" in text and "| render | 1.23 |" in text
    assert "file://" not in text
    # the frames inline (plain images: the UI shows an image inside a link as text)
    assert f" ![frame_0002](http://media.test:4300/{folder_name(HASH)}/frames/frame_0002.png) " in text
    assert "[![" not in text
    # the image comes before the tables: it is what a person opens the page for
    assert text.index("![animation]") < text.index("| output |")


def test_outputs_markdown_without_media_url_links_files(no_media, tmp_path):
    job_dir = tmp_path / "out" / folder_name(HASH)
    text = outputs_markdown(_result(job_dir))
    assert f"![animation]({(job_dir / 'animation.gif').as_uri()})" in text


def test_outputs_markdown_caps_the_thumbnails(media, tmp_path):
    job_dir = tmp_path / "out" / folder_name(HASH)
    frames = [str(job_dir / "frames" / f"frame_{i:04d}.png") for i in range(60)]
    text = outputs_markdown(_result(job_dir, frames=frames, frame_count=60))
    assert text.count("![frame_") == 48 and "The first 48 of 60 frames" in text


def test_outputs_markdown_side_by_side_and_no_gif(media, tmp_path):
    job_dir = tmp_path / "out" / folder_name(HASH)
    res = _result(job_dir, gif=None, side_by_side=str(job_dir / "side_by_side.gif"))
    text = outputs_markdown(res)
    assert "![animation]" not in text
    assert f"![pose and frame](http://media.test:4300/{folder_name(HASH)}/side_by_side.gif)" in text


def test_frame_table_rows_link_frames_and_poses(media, tmp_path):
    job_dir = tmp_path / "out" / folder_name(HASH)
    frames = [SimpleNamespace(index=i, prompt=f"a cat {i}",
                              pose=str(job_dir / "poses" / f"pose_{i:04d}.png") if i else None) for i in range(3)]
    reports = [{"rendered": [1, 2], "frame_seconds": {"1": 0.51234, "2": 0.5}}]
    rows = frame_table(frames, job_dir, reports)
    assert [r["index"] for r in rows] == [0, 1, 2]
    url = f"http://media.test:4300/{folder_name(HASH)}/frames/frame_0001.png"
    assert rows[1]["frame"] == f"[frame_0001.png]({url})"  # the UI renders links in table cells
    assert rows[1]["url"] == url and rows[1]["file"] == str(job_dir / "frames" / "frame_0001.png")
    pose_url = f"http://media.test:4300/{folder_name(HASH)}/poses/pose_0001.png"
    assert rows[1]["pose"] == f"[pose_0001.png]({pose_url})" and rows[0]["pose"] == ""
    assert rows[1]["seconds"] == 0.512 and rows[0]["seconds"] == 0.0
    assert [r["status"] for r in rows] == ["on disk", "rendered", "rendered"]
    assert rows[2]["prompt"] == "a cat 2"
    # report objects (the flow's ChunkReport) give the same rows
    objects = [SimpleNamespace(rendered=[1, 2], frame_seconds={1: 0.51234, 2: 0.5})]
    assert frame_table(frames, job_dir, objects) == rows


def test_publish_outputs_takes_the_flow_result(media, tmp_path, monkeypatch):
    """What ``animate`` hands over (AnimationResult, the plan's frames, ChunkReports) becomes the
    artifacts; Prefect's create functions are recorded instead of called."""
    import uuid

    import prefect.artifacts as pa

    from flows.animation import AnimationResult
    from flows.ui.artifacts import publish_outputs

    calls = []

    def record(kind):
        def create(*args, **kwargs):
            calls.append((kind, args, kwargs))
            return uuid.uuid4()
        return create

    for name in ("create_image_artifact", "create_link_artifact", "create_markdown_artifact",
                 "create_table_artifact", "update_progress_artifact"):
        monkeypatch.setattr(pa, name, record(name))
    job_dir = tmp_path / "out" / folder_name(HASH)
    fields = _result(job_dir)
    result = AnimationResult.model_validate({
        **{k: fields[k] for k in ("job_hash", "job_dir", "frames", "frame_count", "frames_rendered", "frames_skipped",
                                  "gif", "mp4", "contact_sheet", "outputs", "timings", "unet_calls")},
        "inversion_dir": str(tmp_path / "inv"), "inversion_cached": True,
    })
    frames = [SimpleNamespace(index=i, prompt=f"p{i}", pose=None) for i in range(4)]
    progress_id = uuid.uuid4()
    ids = publish_outputs(result, frames, [SimpleNamespace(rendered=[0, 1, 2], frame_seconds={})], "Cat", progress_id)
    assert set(ids) == {f"{k}-cat-0123456789abcdef" for k in ("frames", "outputs", "gif", "mp4", "animation")}
    by_kind = {kind: kwargs for kind, _, kwargs in calls}
    assert calls[0][0] == "update_progress_artifact" and calls[0][1] == (progress_id,)
    assert by_kind["update_progress_artifact"]["progress"] == 100.0
    assert by_kind["update_progress_artifact"]["description"].endswith("100% (4/4 frames), done")
    gif_url = f"http://media.test:4300/{folder_name(HASH)}/animation.gif"
    assert by_kind["create_image_artifact"]["image_url"] == gif_url
    assert f"![animation]({gif_url})" in by_kind["create_markdown_artifact"]["markdown"]
    assert "inversion reused" in by_kind["create_markdown_artifact"]["markdown"]
    assert [r["status"] for r in by_kind["create_table_artifact"]["table"]] == ["rendered"] * 3 + ["on disk"]
    links = [kwargs["link"] for kind, _, kwargs in calls if kind == "create_link_artifact"]
    assert links == [gif_url, gif_url.replace(".gif", ".mp4")]


def _metrics(**not_measured) -> JobMetrics:
    frames = [FrameMetrics(index=i, file=f"frames/frame_{i:04d}.png", appearance_emd=1.23456789 + i,
                           appearance_bhattacharyya=0.123456789, appearance_region="frame") for i in range(3)]
    pairs = [PairMetrics(first=i, second=i + 1, warp_error=3.14159265 * (i + 1), frame_difference=5.0,
                         consistent_fraction=0.9) for i in range(2)]
    return JobMetrics(job_dir="/out/0123456789abcdef", width=64, height=64, frames=frames, pairs=pairs,
                      summary=MetricsSummary(frames=3, warp_error=4.7, frame_difference=5.0, appearance_emd=2.2,
                                             pose_pck=0.75, pose_mean_distance_px=4.2),
                      not_measured=not_measured)


def test_metrics_table_is_labelled_rounded_and_says_what_was_not_measured():
    metrics = _metrics(background_ssim="no subject mask", pose="no poses in this job")
    rows = metrics_table(metrics)
    assert [r["Frame"] for r in rows] == ["0", "1", "2"]
    first = rows[0]
    flicker = next(k for k in first if k.startswith("Flicker"))
    emd = next(k for k in first if k.startswith("Colour dist."))
    ssim = next(k for k in first if k.startswith("Background SSIM"))
    pck = next(k for k in first if k.startswith("Pose PCK"))
    assert "/255" in flicker and "Lab" in emd and "0–1" in ssim  # units in the labels
    assert [r[flicker] for r in rows] == ["3.14", "6.28", "— (last frame)"]
    assert first[emd] == "1.23" and rows[2][emd] == "3.23"
    assert first[ssim] == "—" and first[pck] == "—"  # not measured: a dash, the reason in the description
    assert not any("_" in k for k in first) and not any("@" in k for k in first)
    description = metrics_description(metrics)
    assert "no subject mask" in description and "no poses in this job" in description
    assert "PCK\\@0.05" in description and "metrics.json" in description
    assert "warp error to the next frame" in description and "lower = closer" in description  # the legend


def test_metrics_table_shows_a_frame_field_it_does_not_know():
    """Another metric added to FrameMetrics shows up as a column before anyone labels it."""
    metrics = _metrics()
    frames = [{**f.model_dump(), "retouched": i == 1} for i, f in enumerate(metrics.frames)]
    loose = SimpleNamespace(**{**{k: getattr(metrics, k) for k in ("pairs", "not_measured")},
                               "frames": [SimpleNamespace(model_dump=lambda f=f: f) for f in frames]})
    rows = metrics_table(loose)
    assert [r["Retouched"] for r in rows] == ["no", "yes", "no"]
    assert not any(k.startswith("Background") for k in rows[0])  # nothing measured, no reason: no column
