"""What the ``animate`` flow shows in the Prefect UI: keys, progress text, the outputs page and
the frames table, as plain functions (tested without a server), plus ``publish_outputs`` which
hands them to Prefect.

Links go through ``flows.ui.media.media_url``: with ``MASACTRL_MEDIA_URL`` set (``masactrl-animate
serve`` sets it for its media server) the outputs page shows the GIF, the contact sheet and a
thumbnail per frame inline, the progress artifact links the GIF, and the frames table links each
frame and pose; without it they are ``file://`` links, which browsers do not open from an http page.
What Prefect's UI does with them (checked in Chromium, tests/test_ui_browser.py): images load on an
artifact's own page only (the run's Artifacts tab shows none), and table cells are text or links,
never images.

Every text that Prefect renders as markdown (descriptions, table cells, page text) goes through
``md_text``: its UI turns ``name@host.tld`` into a ``mailto:`` link and bare ``www.``/``http://``
text into links, so those are escaped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Optional
from uuid import UUID

from flows.jobdir.layout import JobFolder, folder_name
from flows.quality.report import JobMetrics, column_notes, metrics_table, not_measured_lines, summary_line
from flows.ui.media import media_url

_NAME_CHARS = 40  # of the job name in a key: keys stay readable in the UI's lists
MAX_THUMBNAILS = 48  # frames shown inline on the outputs page (the contact sheet shows them all)

ProgressStatus = Literal["running", "done", "cancelled", "failed"]


# --- keys and labels --------------------------------------------------------------------------


def slugify(text: Optional[str]) -> str:
    """Lowercase letters, digits and single dashes only (what Prefect allows in artifact keys)."""
    slug = re.sub(r"[^a-z0-9]+", "-", (text or "").lower()).strip("-")
    return slug[:_NAME_CHARS].rstrip("-")


def artifact_key(kind: str, job_hash: str, job_name: Optional[str] = None) -> str:
    """``<kind>-<job name>-<hash16>``, or ``<kind>-<hash16>`` for a job without a name.

    The hash stays the last dash-separated part, the job folder's name, so a key leads back to it.
    """
    parts = [slugify(kind), slugify(job_name), folder_name(job_hash).lower()]
    return "-".join(p for p in parts if p)


def job_hash_of_key(key: str) -> str:
    """The job hash part of a key made by ``artifact_key``: the job folder's name."""
    return key.rsplit("-", 1)[-1]


def job_label(job_hash: str, job_name: Optional[str] = None) -> str:
    return f"{job_name} ({folder_name(job_hash)})" if job_name else folder_name(job_hash)


# --- progress -----------------------------------------------------------------------------------


def progress_percent(done: int, total: int) -> float:
    """Percentage of frames on disk, 0–100 (a job without frames is complete)."""
    if total <= 0:
        return 100.0
    return max(0.0, min(100.0, 100.0 * done / total))


def progress_description(
    done: int,
    total: int,
    job_hash: str,
    job_name: Optional[str] = None,
    status: ProgressStatus = "running",
    failed_chunk: Optional[int] = None,
    chunk_count: Optional[int] = None,
    gif_url: Optional[str] = None,
) -> str:
    """The progress artifact's summary (markdown): percentage, frames done/total, and how the run ended.

    ``failed_chunk`` is the 0-based index of the chunk that failed (shown 1-based, "chunk 2 of 5").
    ``gif_url``: a finished job's animation, linked first (the progress card is what the run page
    shows on top).
    """
    head = (f"Frames of job {md_text(job_label(job_hash, job_name))}: {progress_percent(done, total):.0f}% "
            f"({done}/{total} frames)")
    if status == "done":
        link = f"[Open the animation (GIF)]({gif_url}) · " if gif_url else ""
        return f"{link}{head}, done"
    if status == "cancelled":
        return f"{head}, cancelled; run the job again to resume"
    if status == "failed":
        if failed_chunk is not None:
            of = f" of {chunk_count}" if chunk_count else ""
            where = f"failed at chunk {failed_chunk + 1}{of}"
        else:
            where = "failed"
        return f"{head}, {where}; the frames on disk are kept: run the job again to render the rest"
    return head


# --- outputs and frames -------------------------------------------------------------------------


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _output_root(job_dir: str | os.PathLike) -> Path:
    """The job's output folder (the job folder's parent): the media root when no other is set."""
    return Path(job_dir).absolute().parent


_AUTOLINK = re.compile(r"(?i)(://|www\.)")


def md_text(text: Any) -> str:
    """Plain text for markdown that Prefect renders (a description, a table cell, page text): one
    line, no HTML, no emphasis or link syntax, and nothing its UI would turn into a link by itself
    (``PCK@0.05`` became a ``mailto:`` link; ``www.x``, ``http://x`` become links)."""
    out = str(text).replace("\\", "\\\\")
    for char in "`*[]|@":  # "_" inside words is no emphasis in GFM: file names stay readable
        out = out.replace(char, "\\" + char)
    out = out.replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")
    return _AUTOLINK.sub(lambda m: m.group(1).replace("/", "\\/").replace(".", "\\."), out)



def outputs_markdown(result: Any) -> str:
    """The outputs page of a finished job (an ``AnimationResult`` or its dict).

    The GIF, the pose | frame preview and the contact sheet are inline images, then the frames
    themselves; every output is a link; then timings and UNet calls.
    """
    job_hash = _get(result, "job_hash")
    job_dir = _get(result, "job_dir")
    root = _output_root(job_dir)
    name = _get(result, "job_name")
    outputs: Mapping[str, str] = _get(result, "outputs") or {}
    lines = [
        f"# Animation {md_text(job_label(job_hash, name))}",
        "",
        f"{_get(result, 'frame_count')} frames ({_get(result, 'frames_rendered')} rendered now, "
        f"{_get(result, 'frames_skipped')} already on disk); "
        f"inversion {'reused' if _get(result, 'inversion_cached') else 'computed'}.",
        "",
    ]
    # What a person should know before judging the pictures (the tiny model draws noise) comes first.
    for note in _get(result, "notes") or ():
        lines += [f"> **Note:** {md_text(note)}", ""]
    gif = _get(result, "gif")
    if gif:
        lines += [f"![animation]({media_url(gif, root)})", ""]
    side = _get(result, "side_by_side")
    if side and Path(side).suffix.lower() in (".gif", ".png"):
        lines += [f"![pose and frame]({media_url(side, root)})", ""]
    sheet = _get(result, "contact_sheet")
    if sheet:
        lines += [f"![contact sheet]({media_url(sheet, root)})", ""]
    frame_files = list(_get(result, "frames") or [])
    if frame_files:
        shown = frame_files[:MAX_THUMBNAILS]
        lines += ["## Frames", "", " ".join(thumbnail_markdown(f, root, Path(f).stem) for f in shown), ""]
        if len(frame_files) > len(shown):
            lines += [f"The first {len(shown)} of {len(frame_files)} frames; all are in the frames table.", ""]
    lines += ["| output | file |", "| --- | --- |"]
    for key, path in sorted(outputs.items()):
        lines.append(f"| {md_text(key)} | [{md_text(path)}]({media_url(path, root)}) |")
    frames_dir = JobFolder(job_dir).frames_dir
    lines.append(f"| frames | {md_text(frames_dir)} (see the frames table) |")
    timings: Mapping[str, float] = _get(result, "timings") or {}
    if timings:
        lines += ["", "| stage | seconds |", "| --- | --- |"]
        lines += [f"| {md_text(k)} | {float(v):.2f} |" for k, v in timings.items()]
    calls: Mapping[str, int] = _get(result, "unet_calls") or {}
    if calls:
        lines += ["", "| UNet | count |", "| --- | --- |"]
        lines += [f"| {md_text(k)} | {v} |" for k, v in calls.items()]
    return "\n".join(lines)


def thumbnail_markdown(path: str | os.PathLike, root: str | os.PathLike | None, alt: str) -> str:
    """An inline picture for markdown artifacts. A plain image: the UI's markdown renders an image
    wrapped in a link (``[![alt](url)](url)``) as text, so the frames table carries the links."""
    return f"![{md_text(alt)}]({media_url(path, root)})"


def frame_link_markdown(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """A link to one frame for a table cell: Prefect's UI renders links in table cells, not images."""
    return f"[{md_text(Path(path).name)}]({media_url(path, root)})"


def frame_table(frames: Iterable[Any], job_dir: str | os.PathLike, reports: Iterable[Any]) -> list[dict]:
    """One row per planned frame: index, frame and pose (links to the PNGs), prompt, file, url, seconds, status.

    ``frames`` are the plan's frames (``index``, ``prompt``, ``pose``); ``reports`` the render
    chunks' reports, objects or dicts (``rendered`` indices, ``frame_seconds`` by index).
    """
    seconds: dict[int, float] = {}
    rendered: set[int] = set()
    for r in reports:
        rendered.update(int(i) for i in (_get(r, "rendered") or ()))
        seconds.update({int(k): float(v) for k, v in (_get(r, "frame_seconds") or {}).items()})
    root = _output_root(job_dir)
    folder = JobFolder(job_dir)
    rows = []
    for f in frames:
        index = int(_get(f, "index"))
        pose = _get(f, "pose")
        path = folder.frame(index)
        rows.append({
            "index": index,
            "frame": frame_link_markdown(path, root),
            "prompt": _get(f, "prompt"),
            "pose": frame_link_markdown(pose, root) if pose else "",
            "file": str(path),
            "url": media_url(path, root),
            "seconds": round(seconds.get(index, 0.0), 3),
            "status": "rendered" if index in rendered else "on disk",
        })
    return rows


# --- publishing (needs a flow or task run context) ------------------------------------------------


def publish_outputs(result: Any, frames: Iterable[Any], reports: Iterable[Any],
                    job_name: Optional[str] = None, progress_id: Optional[UUID] = None) -> dict[str, UUID]:
    """Create the artifacts of a finished job: progress 100 %, frames table, outputs page, GIF/MP4
    links and the GIF as an image artifact. Returns their ids by key."""
    from prefect.artifacts import (
        create_image_artifact,
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
        update_progress_artifact,
    )

    job_hash, job_dir = _get(result, "job_hash"), _get(result, "job_dir")
    label = job_label(job_hash, job_name)
    root = _output_root(job_dir)
    total = int(_get(result, "frame_count") or 0)
    ids: dict[str, UUID] = {}
    gif = _get(result, "gif")
    if progress_id is not None:
        update_progress_artifact(progress_id, progress=100.0, description=progress_description(
            total, total, job_hash, job_name, "done", gif_url=media_url(gif, root) if gif else None))
    key = artifact_key("frames", job_hash, job_name)
    ids[key] = create_table_artifact(
        key=key, table=frame_table(frames, job_dir, reports),
        description=f"Frames of job {md_text(label)}: links to each frame and pose, prompt, file, seconds",
    )
    view = dict(result) if isinstance(result, Mapping) else {
        k: _get(result, k) for k in ("job_hash", "job_dir", "frames", "frame_count", "frames_rendered", "frames_skipped",
                                     "inversion_cached", "gif", "mp4", "contact_sheet", "side_by_side", "outputs",
                                     "timings", "unet_calls", "notes")
    }
    view["job_name"] = job_name
    key = artifact_key("outputs", job_hash, job_name)
    ids[key] = create_markdown_artifact(key=key, markdown=outputs_markdown(view), description=f"Outputs of job {md_text(label)}")
    for kind in ("gif", "mp4"):
        path = _get(result, kind)
        if path:
            key = artifact_key(kind, job_hash, job_name)
            ids[key] = create_link_artifact(key=key, link=media_url(path, root), link_text=Path(path).name,
                                            description=f"{kind.upper()} of job {md_text(label)}")
    if gif:
        key = artifact_key("animation", job_hash, job_name)
        ids[key] = create_image_artifact(image_url=media_url(gif, root), key=key,
                                         description=f"Animation of job {md_text(label)}")
    return ids


def metrics_description(metrics: JobMetrics, root: str | os.PathLike | None = None) -> str:
    """The metrics table's description (markdown): the summary line, what was not measured and
    why, and a link to metrics.json with every number at full precision."""
    job_dir = Path(metrics.job_dir)
    lines = [md_text(summary_line(metrics))]
    gaps = not_measured_lines(metrics)
    if gaps:
        lines += ["", "— not measured: " + "; ".join(md_text(line) for line in gaps)]
    notes = column_notes(metrics_table(metrics))
    if notes:
        lines += ["", "Columns: " + "; ".join(md_text(note) for note in notes) + "."]
    path = JobFolder(job_dir).metrics
    lines += ["", f"Rounded here; every number at full precision: [metrics.json]({media_url(path, root or _output_root(job_dir))})"]
    return "\n".join(lines)


def publish_metrics(metrics: JobMetrics, job_hash: str, job_name: Optional[str] = None) -> UUID:
    """The metrics table of a measured job: one row per frame, labelled columns with units, rounded
    numbers, "—" where a metric was not measured (flows/quality/report.py ``metrics_table``)."""
    from prefect.artifacts import create_table_artifact

    return create_table_artifact(key=artifact_key("metrics", job_hash, job_name), table=metrics_table(metrics),
                                 description=metrics_description(metrics))
