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


__all__ = [
    "METRICS_FILE", "METRICS_VERSION", "FrameMetrics", "JobMetrics", "MetricsSummary", "PairMetrics",
    "read_metrics", "summary_line", "write_metrics",
]
