"""metrics.json: its schema, writing and reading it, and the one-line summary for people.

The schema is what other tools read: renaming a key is a METRICS_VERSION bump.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from flows.jobdir import frames_io
from flows.jobdir.layout import METRICS_FILE, JobFolder

METRICS_VERSION = 1


class _Schema(BaseModel):
    # inf is a real answer (source PSNR of a perfect decode), so it must survive the JSON round trip.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class FrameMetrics(_Schema):
    index: int = Field(description="Frame index (frames/frame_XXXX.png).")
    file: str = Field(description="Frame file, relative to the job folder.")
    appearance_emd: Optional[float] = Field(None, description="Colour distance from the source: mean 1-D EMD of "
                                            "the L*, a*, b* histograms, CIELAB units (lower is closer).")
    appearance_bhattacharyya: Optional[float] = Field(None, description="Bhattacharyya distance of 32-bin Lab "
                                                      "histograms, mean over channels (0 same .. 1 disjoint).")
    appearance_region: Optional[Literal["subject", "frame"]] = Field(None, description="Where the colours were "
                                                                     "compared: inside the subject mask, or the whole frame.")
    background_ssim: Optional[float] = Field(None, description="SSIM with the source outside the subject (needs a mask).")
    pose_pck: Optional[float] = Field(None, description="PCK@0.05: requested body keypoints found within 5% of the diagonal.")
    pose_mean_distance_px: Optional[float] = Field(None, description="Mean distance of the found keypoints, pixels.")
    pose_points: Optional[int] = Field(None, description="Requested visible body keypoints in this frame.")
    # In-between frames (output.interpolate): rows of their own, apart from the rendered frames' means.
    interpolated: Optional[bool] = Field(None, description="True: an in-between frame made from two rendered "
                                         "frames (no pose scored); false: rendered; empty: the job has none.")
    between: Optional[list[int]] = Field(None, description="In-between frames: the two rendered frames it lies between.")
    t: Optional[float] = Field(None, description="In-between frames: how far from the first to the second (0-1).")


class PairMetrics(_Schema):
    first: int
    second: int
    warp_error: float = Field(description="Mean |frame_i - warp(frame_i+1)| over flow-consistent pixels, 0-255.")
    frame_difference: float = Field(description="Mean |frame_i - frame_i+1|, 0-255 (no motion compensation).")
    consistent_fraction: float = Field(description="Share of pixels with forward-backward consistent flow.")


class MetricsSummary(_Schema):
    frames: int
    warp_error: Optional[float] = Field(None, description="Mean over consecutive pairs (lower: less flicker).")
    frame_difference: Optional[float] = Field(None, description="Mean over consecutive pairs.")
    appearance_emd: Optional[float] = Field(None, description="Mean over frames (lower: colours closer to the source).")
    appearance_bhattacharyya: Optional[float] = None
    appearance_region: Optional[Literal["subject", "frame"]] = None
    background_ssim: Optional[float] = Field(None, description="Mean over frames (higher: background kept).")
    pose_pck: Optional[float] = Field(None, description="Pooled over all requested keypoints of all frames.")
    pose_mean_distance_px: Optional[float] = None
    source_psnr_db: Optional[float] = Field(None, description="Source vs the source branch's decode (inf: identical).")


class JobMetrics(_Schema):
    version: int = Field(METRICS_VERSION, description="Schema version of metrics.json.")
    job_dir: str
    job_hash: Optional[str] = None
    width: int
    height: int
    frames: list[FrameMetrics]
    pairs: list[PairMetrics]
    wrap_pair: Optional[PairMetrics] = Field(None, description="Looping animations (output.loop): the pair "
                                             "played when the animation wraps around to its first frame.")
    summary: MetricsSummary
    not_measured: dict[str, str] = Field(default_factory=dict, description="Metric -> why it was not measured.")
    method: dict[str, Any] = Field(default_factory=dict, description="How the numbers were computed.")
    seconds: float = Field(0.0, description="Time spent computing the metrics.")


def write_metrics(job_dir: str | os.PathLike, metrics: JobMetrics) -> Path:
    """Write ``metrics.json`` atomically next to result.json."""
    return frames_io.write_json_atomic(JobFolder(job_dir).metrics, json.loads(metrics.model_dump_json()))


def read_metrics(job_dir: str | os.PathLike) -> JobMetrics:
    return JobMetrics.model_validate_json(JobFolder(job_dir).metrics.read_text())


def _num(value: Optional[float], fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def summary_line(metrics: JobMetrics) -> str:
    """One line for people: the summary numbers, then what was not measured."""
    s = metrics.summary
    parts = [f"{s.frames} frames"]
    if s.warp_error is not None:
        parts.append(f"warp error {s.warp_error:.2f} (frame diff {s.frame_difference:.2f}) /255")
    if s.appearance_emd is not None:
        parts.append(f"colour distance {s.appearance_emd:.2f} Lab ({s.appearance_region})")
    if s.background_ssim is not None:
        parts.append(f"background SSIM {s.background_ssim:.3f}")
    if s.pose_pck is not None:
        parts.append(f"PCK@0.05 {s.pose_pck:.2f} (mean {_num(s.pose_mean_distance_px, '.1f')} px)")
    if s.source_psnr_db is not None:
        parts.append(f"source PSNR {s.source_psnr_db:.1f} dB")
    if metrics.not_measured:
        parts.append("not measured: " + ", ".join(sorted(metrics.not_measured)))
    return "metrics: " + " | ".join(parts)


# --- the per-frame table for people --------------------------------------------------------------
#
# metrics.json keeps every number at full precision; the table rounds them, labels them with their
# units and says "—" where a metric was not measured (the reasons are listed once beside it). A
# frame field not listed here still gets a column, under its own name, so a new metric shows up
# before anyone labels it.

NOT_MEASURED = "—"

# (field of FrameMetrics, column label, decimals, the not_measured key that explains a gap). Short
# labels and one number per question keep the table on one screen at 1400 px; ``COLUMN_NOTES``
# says what each column means. The fields left out here (``SUMMARY_ONLY``) are in metrics.json.
FRAME_COLUMNS: tuple[tuple[str, str, Optional[int], str], ...] = (
    ("appearance_emd", "Colour dist. (Lab)", 2, "appearance"),
    ("background_ssim", "Background SSIM (0–1)", 3, "background_ssim"),
    ("pose_pck", "Pose PCK (0–1)", 2, "pose"),
    ("pose_mean_distance_px", "Pose error (px)", 1, "pose"),
)
# The second colour distance, where it was compared (the summary line says so) and the keypoint count.
SUMMARY_ONLY = {"appearance_bhattacharyya", "appearance_region", "pose_points"}
FRAME_LABEL = "Frame"
WARP_LABEL = "Flicker (/255)"
WARP_DECIMALS = 2
COLUMN_NOTES = {
    WARP_LABEL: "warp error to the next frame, 0–255, lower = steadier",
    "Colour dist. (Lab)": "colour distance to the source (EMD of the Lab histograms), lower = closer",
    "Background SSIM (0–1)": "likeness of the background to the source's, higher = kept",
    "Pose PCK (0–1)": "share of the asked-for keypoints found within 5% of the diagonal",
    "Pose error (px)": "mean distance of the keypoints found",
}
_NOT_IN_TABLE = {"index", "file"}

# not_measured key -> what a person calls it
NOT_MEASURED_NAMES = {
    "warp_error": "flicker (warp error)",
    "appearance": "colour distance to the source",
    "background_ssim": "background SSIM",
    "source_psnr": "source PSNR",
    "pose": "pose keypoints",
}


def _cell(value: Any, decimals: Optional[int], not_measured: bool = True) -> str:
    """A number rounded for people; None is "—" where the metric was not measured (its reason is
    in ``not_measured_lines``) and "n/a" where it was but means nothing for this frame (no
    keypoint found, so no keypoint distance)."""
    if value is None:
        return NOT_MEASURED if not_measured else "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return f"{value:.{3 if decimals is None else decimals}f}"
    if isinstance(value, int) and decimals is not None:
        return str(value)
    return str(value)


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


# Fields that say where an in-between row sits; shown in its Frame cell.
_INBETWEEN_FIELDS = {"interpolated", "between", "t"}


def metrics_table(metrics: JobMetrics) -> list[dict[str, str]]:
    """One row per frame for people: labelled columns with units, rounded numbers, "—" where a
    metric was not measured (``not_measured_lines`` says why). Columns with nothing measured in
    any frame and no reason recorded are left out; frame fields not known here are shown as they are."""
    frames = [frame.model_dump() for frame in metrics.frames]
    warp = {int(getattr(pair, "first")): getattr(pair, "warp_error", None) for pair in metrics.pairs}
    columns = [(name, label, decimals, reason) for name, label, decimals, reason in FRAME_COLUMNS
               if reason in metrics.not_measured or any(f.get(name) is not None for f in frames)]
    known = {name for name, *_ in FRAME_COLUMNS} | _NOT_IN_TABLE | SUMMARY_ONLY | _INBETWEEN_FIELDS
    extra = sorted({k for f in frames for k in f if k not in known and f.get(k) is not None})
    rows = []
    for frame in frames:
        index = int(frame["index"])
        if frame.get("interpolated"):  # an in-between: flicker is measured between rendered frames only
            first, second = frame.get("between") or (index, index + 1)
            row = {FRAME_LABEL: f"{first}→{second} at {frame.get('t') or 0:.2f} (in-between)",
                   WARP_LABEL: f"{NOT_MEASURED} (in-between)"}
            row.update({label: _cell(frame.get(name), decimals, reason in metrics.not_measured)
                        for name, label, decimals, reason in columns})
            rows.append(row)
            continue
        if index in warp:
            flicker = _cell(warp[index], WARP_DECIMALS)
        else:  # the last frame has no next one; a single frame has no pair at all
            flicker = NOT_MEASURED if "warp_error" in metrics.not_measured or not warp else f"{NOT_MEASURED} (last frame)"
        row = {FRAME_LABEL: str(index), WARP_LABEL: flicker}
        row.update({label: _cell(frame.get(name), decimals, reason in metrics.not_measured)
                    for name, label, decimals, reason in columns})
        row.update({_label(name): _cell(frame.get(name), None) for name in extra})
        rows.append(row)
    return rows


def column_notes(rows: list[dict[str, str]]) -> list[str]:
    """"<label>: <meaning>" for the columns of ``metrics_table`` rows that have a note."""
    return [f"{label}: {COLUMN_NOTES[label]}" for label in (rows[0] if rows else {}) if label in COLUMN_NOTES]


def not_measured_lines(metrics: JobMetrics) -> list[str]:
    """"<what>: <why>" for every metric that was not measured (the gaps in ``metrics_table``)."""
    return [f"{NOT_MEASURED_NAMES.get(key, _label(key))}: {reason}" for key, reason in sorted(metrics.not_measured.items())]


__all__ = [
    "METRICS_FILE", "METRICS_VERSION", "NOT_MEASURED", "FrameMetrics", "JobMetrics", "MetricsSummary", "PairMetrics",
    "column_notes", "metrics_table", "not_measured_lines", "read_metrics", "summary_line", "write_metrics",
]
