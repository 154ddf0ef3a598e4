"""Every metric of a job folder's frames, measured in a few named steps into one ``JobMetrics``.

``compute_job_metrics`` measures a finished job folder (the measure task, ``masactrl-animate
metrics JOB_DIR``); ``compute_frame_metrics`` some frames of a folder that need not be finished
(a sweep cell renders a few frames of its job). What cannot be measured (no poses, no masks, the
source gone) is named in ``not_measured`` with the reason instead of failing the whole report.
The numbers themselves come from ``flicker``, ``likeness`` and ``pose`` beside this module.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from pose_sources import PoseDetector
from pose_sources.detectors import DetectorKind

from flows.jobdir.layout import SOURCE_DECODE_FILE, JobFolder
from flows.quality import job_folder
from flows.quality.flicker import FB_ALPHA, FB_BETA, pair_flicker
from flows.quality.job_folder import FrameFiles, PosesOrReason
from flows.quality.likeness import HIST_BINS, appearance, psnr
from flows.quality.pictures import ImageLike, as_rgb
from flows.quality.pose import PCK_THRESHOLD, PooledPoseScore, load_pose_detector, pose_fidelity, requests_points
from flows.quality.report import FrameMetrics, JobMetrics, MetricsSummary, PairMetrics


def compute_job_metrics(
    job_dir: str | os.PathLike,
    *,
    source_image: Optional[ImageLike] = None,
    source_decode: Optional[ImageLike] = None,
    source_mask: Optional[ImageLike] = None,
    frame_masks: Optional[Sequence[Optional[ImageLike]]] = None,
    requested_poses: Optional[Sequence[Any]] = None,
    detector: Optional[PoseDetector] = None,
    detector_kind: Optional[DetectorKind] = None,
    detector_dir: Optional[str | os.PathLike] = None,
) -> JobMetrics:
    """Every metric of a finished job folder.

    Defaults, when an argument is None: the source is ``<inversion_dir>/source.png`` (the
    inversion folder named in result.json); the source decode is ``source_decode.png`` in the job
    folder, else in the inversion folder; masks are ``masks/source.png`` and
    ``masks/frame_XXXX.png`` (one given = used for both sides); requested poses are
    ``poses/pose_XXXX.json`` or the job's keypoint pose spec; the detector is
    ``load_pose_detector(detector_kind, detector_dir)`` (kind None: pose_sources' default),
    loaded only when there are poses. What cannot be measured is named in ``not_measured``
    with the reason. In-between frames and the loop mode come from the stitch's ``playback.json``.
    """
    job_dir = Path(job_dir).absolute()
    result = job_folder.read_result(job_dir)
    files = job_folder.finished_frame_files(job_dir, result)
    return _measure(job_dir, files, job_folder.inversion_dir_of(result), job_folder.job_hash_of(result),
                    source_image=source_image, source_decode=source_decode, source_mask=source_mask,
                    frame_masks=frame_masks, requested_poses=requested_poses, detector=detector,
                    detector_kind=detector_kind, detector_dir=detector_dir, playback=read_playback(job_dir))


def read_playback(job_dir: str | os.PathLike) -> Optional[dict]:
    """What the stitch played (``playback.json``): None for jobs stitched before it was written."""
    try:
        return json.loads(JobFolder(job_dir).playback.read_text())
    except (OSError, ValueError):
        return None


def compute_frame_metrics(
    job_dir: str | os.PathLike,
    indices: Sequence[int],
    inversion_dir: Optional[str | os.PathLike],
    *,
    job_hash: Optional[str] = None,
    **options: Any,
) -> JobMetrics:
    """The metrics of some frames of a job folder that need not be finished (a sweep cell renders
    a few frames of its job): ``frames/frame_XXXX.png`` for each index, in the order given, with
    the source and its decode taken from ``inversion_dir``. ``options`` are those of
    ``compute_job_metrics`` (source_image, source_decode, masks, requested_poses, detector...)."""
    job_dir = Path(job_dir).absolute()
    if not indices:
        raise ValueError("indices: no frames to measure; give at least one frame index")
    files = job_folder.rendered_frame_files(job_dir, list(indices))
    return _measure(job_dir, files, Path(inversion_dir) if inversion_dir else None, job_hash, **options)


@dataclass
class _Frames:
    """The frames being measured, where they came from, and the rows their numbers go into."""

    job_dir: Path
    inversion_dir: Optional[Path]
    indices: list[int]
    pictures: list[np.ndarray]
    rows: list[FrameMetrics]

    @classmethod
    def read(cls, job_dir: Path, files: FrameFiles, inversion_dir: Optional[Path]) -> "_Frames":
        return cls(job_dir, inversion_dir, [i for i, _ in files], [as_rgb(p, f"frame {p.name}") for _, p in files],
                   [FrameMetrics(index=i, file=str(p.relative_to(job_dir))) for i, p in files])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the first frame, the canvas every pose is scored on."""
        height, width = self.pictures[0].shape[:2]
        return width, height


def _measure(
    job_dir: Path,
    files: FrameFiles,
    inversion_dir: Optional[Path],
    job_hash: Optional[str],
    *,
    source_image: Optional[ImageLike] = None,
    source_decode: Optional[ImageLike] = None,
    source_mask: Optional[ImageLike] = None,
    frame_masks: Optional[Sequence[Optional[ImageLike]]] = None,
    requested_poses: Optional[Sequence[Any]] = None,
    detector: Optional[PoseDetector] = None,
    detector_kind: Optional[DetectorKind] = None,
    detector_dir: Optional[str | os.PathLike] = None,
    playback: Optional[dict] = None,
) -> JobMetrics:
    """What both entry points share once they know which frame files to measure. ``playback``:
    what was played (``read_playback``): its in-between frames get rows of their own, marked
    interpolated, and a looping animation's wrap-around pair is measured."""
    t0 = time.perf_counter()
    frames = _Frames.read(job_dir, files, inversion_dir)
    not_measured: dict[str, str] = {}
    pairs = _flicker(frames)
    if not pairs:
        not_measured["warp_error"] = "one frame only: no consecutive pair"
    src = _appearance(frames, source_image, source_mask, frame_masks, not_measured)
    psnr_db = _source_psnr(frames, src, source_decode, not_measured)
    totals, detector = _pose_fidelity(frames, requested_poses, detector, detector_kind, detector_dir, not_measured)
    width, height = frames.size
    summary = _summary(frames, pairs, totals, psnr_db)  # rendered frames only, comparable across jobs
    rows = _with_inbetweens(frames, playback, src, not_measured)
    return JobMetrics(
        job_dir=str(job_dir), job_hash=job_hash, width=width, height=height, frames=rows, pairs=pairs,
        wrap_pair=_wrap_pair(frames, playback), summary=summary, not_measured=not_measured,
        method=_method(detector), seconds=round(time.perf_counter() - t0, 3),
    )


def _pair(frames: _Frames, first: int, second: int) -> PairMetrics:
    pictures = dict(zip(frames.indices, frames.pictures))
    f = pair_flicker(pictures[first], pictures[second])
    return PairMetrics(first=first, second=second, warp_error=f.warp_error, frame_difference=f.frame_difference,
                       consistent_fraction=f.consistent_fraction)


def _wrap_pair(frames: _Frames, playback: Optional[dict]) -> Optional[PairMetrics]:
    """A looping animation's last rendered frame played and the first it wraps around to
    (crossfade: n-1 -> 0, bridged by in-betweens; pingpong: 1 -> 0)."""
    if not playback or playback.get("loop") in (None, "none"):
        return None
    shown = [e["index"] for e in playback.get("frames", []) if not e.get("interpolated")]
    if len(shown) < 2 or not {shown[-1], shown[0]} <= set(frames.indices):
        return None
    return _pair(frames, shown[-1], shown[0])


def _with_inbetweens(frames: _Frames, playback: Optional[dict], src: Optional[np.ndarray],
                     not_measured: dict[str, str]) -> list[FrameMetrics]:
    """The rendered frames' rows, each followed by rows for the in-between frames played after it
    (colour distance only: no pose is asked of an in-between, and masks belong to rendered frames)."""
    entries = [e for e in (playback or {}).get("frames", []) if e.get("interpolated")]
    if not entries:
        return frames.rows
    after: dict[int, list[FrameMetrics]] = {}
    seen: set[str] = set()
    for e in entries:
        if e["file"] in seen:
            continue  # a pingpong plays each in-between twice
        seen.add(e["file"])
        path = frames.job_dir / e["file"]
        row = FrameMetrics(index=e["index"], file=e["file"], interpolated=True, between=[e["index"], e["to"]], t=e["t"])
        try:
            picture = as_rgb(path, f"in-between frame {path.name}")
        except (OSError, ValueError) as exc:
            not_measured["interpolated"] = f"{e['file']}: {exc} (stitch the job again to make it anew)"
            continue
        if src is not None:
            a = appearance(src, picture, None, None)
            row.appearance_emd, row.appearance_bhattacharyya, row.appearance_region = a.emd, a.bhattacharyya, a.region
        after.setdefault(e["index"], []).append(row)
    rows: list[FrameMetrics] = []
    for row in frames.rows:
        rows.append(row.model_copy(update={"interpolated": False}))
        rows += after.pop(row.index, [])
    return rows


def _flicker(frames: _Frames) -> list[PairMetrics]:
    """Warp error and plain difference of each consecutive pair, in the order measured."""
    return [_pair(frames, frames.indices[k], frames.indices[k + 1]) for k in range(len(frames.pictures) - 1)]


def _given_or_found_masks(
    frames: _Frames,
    source_mask: Optional[ImageLike],
    frame_masks: Optional[Sequence[Optional[ImageLike]]],
) -> tuple[Optional[ImageLike], Optional[list[Optional[ImageLike]]]]:
    """The masks given, else those in the job folder's masks/; one frame mask per frame."""
    auto_source_mask, auto_frame_masks = job_folder.mask_files(frames.job_dir, frames.indices)
    source_mask = source_mask if source_mask is not None else auto_source_mask
    masks = list(frame_masks) if frame_masks is not None else auto_frame_masks
    if masks is not None and len(masks) != len(frames.pictures):
        raise ValueError(f"frame_masks: {len(masks)} masks for {len(frames.pictures)} frames; give one per frame")
    return source_mask, masks


def _appearance(
    frames: _Frames,
    source_image: Optional[ImageLike],
    source_mask: Optional[ImageLike],
    frame_masks: Optional[Sequence[Optional[ImageLike]]],
    not_measured: dict[str, str],
) -> Optional[np.ndarray]:
    """Colour distance and background SSIM of each frame into its row; the source picture read
    (None when there is none, and then neither can be measured)."""
    if source_image is None:
        source_image = job_folder.inverted_source(frames.inversion_dir)
    source_mask, masks = _given_or_found_masks(frames, source_mask, frame_masks)
    if source_image is None:
        not_measured["appearance"] = job_folder.missing_source_reason(frames.inversion_dir)
        return None
    src = as_rgb(source_image, "source image")
    for k, row in enumerate(frames.rows):
        a = appearance(src, frames.pictures[k], source_mask, masks[k] if masks is not None else None)
        row.appearance_emd, row.appearance_bhattacharyya = a.emd, a.bhattacharyya
        row.appearance_region, row.background_ssim = a.region, a.background_ssim
    if source_mask is None and masks is None:
        not_measured["background_ssim"] = "no subject mask (give mask images, or masks/ in the job folder)"
    return src


def _source_psnr(
    frames: _Frames,
    src: Optional[np.ndarray],
    source_decode: Optional[ImageLike],
    not_measured: dict[str, str],
) -> Optional[float]:
    """How faithfully the source survives the VAE: source vs the source branch's final decode."""
    if source_decode is None:
        source_decode = job_folder.source_decode_file(frames.job_dir, frames.inversion_dir)
    if src is None:
        not_measured["source_psnr"] = "no source image"
    elif source_decode is None:
        not_measured["source_psnr"] = f"no {SOURCE_DECODE_FILE} (the source branch's decode) in the job folder"
    else:
        return psnr(src, source_decode)
    return None


def _requested_poses(frames: _Frames, given: Optional[Sequence[Any]]) -> PosesOrReason:
    """One requested pose per frame (given, or found in the job folder), or (None, why not)."""
    if given is not None:
        poses, reason = list(given), None
    else:
        poses, reason = job_folder.requested_poses(frames.job_dir, frames.indices, frames.size)
    if poses is not None and len(poses) != len(frames.pictures):
        raise ValueError(f"requested_poses: {len(poses)} poses for {len(frames.pictures)} frames; give one per frame")
    if poses is not None and not any(p is not None and p.people for p in poses):
        return None, "no requested keypoints in any frame"
    return poses, reason


def _pose_fidelity(
    frames: _Frames,
    requested_poses: Optional[Sequence[Any]],
    detector: Optional[PoseDetector],
    detector_kind: Optional[DetectorKind],
    detector_dir: Optional[str | os.PathLike],
    not_measured: dict[str, str],
) -> tuple[Optional[PooledPoseScore], Optional[PoseDetector]]:
    """PCK of each frame that requests keypoints into its row; the pooled totals and the detector
    that found them, or (None, None) when pose fidelity cannot be measured."""
    poses, reason = _requested_poses(frames, requested_poses)
    if poses is not None and detector is None:
        # Loaded only now: building a detector costs seconds, and jobs without poses never need one.
        detector, reason = load_pose_detector(detector_kind, detector_dir)
    if poses is None or detector is None:
        not_measured["pose"] = reason or "no pose detector"
        return None, None
    totals = PooledPoseScore()
    for k, row in enumerate(frames.rows):
        if not requests_points(poses[k]):
            continue  # nothing requested in this frame: no detection, no score
        found = detector.detect(Image.fromarray(frames.pictures[k]))
        score = pose_fidelity(poses[k].fit_to(frames.size, "stretch"), found)
        row.pose_pck, row.pose_mean_distance_px, row.pose_points = score.pck, score.mean_distance, score.requested
        totals.add(score)
    return totals, detector


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _summary(
    frames: _Frames,
    pairs: list[PairMetrics],
    totals: Optional[PooledPoseScore],
    psnr_db: Optional[float],
) -> MetricsSummary:
    rows = frames.rows
    return MetricsSummary(
        frames=len(rows),
        warp_error=_mean([p.warp_error for p in pairs]),
        frame_difference=_mean([p.frame_difference for p in pairs]),
        appearance_emd=_mean([r.appearance_emd for r in rows]),
        appearance_bhattacharyya=_mean([r.appearance_bhattacharyya for r in rows]),
        appearance_region=rows[0].appearance_region,
        background_ssim=_mean([r.background_ssim for r in rows]),
        pose_pck=totals.pck if totals is not None else None,
        pose_mean_distance_px=totals.mean_distance if totals is not None else None,
        source_psnr_db=psnr_db,
    )


def _method(detector: Optional[PoseDetector]) -> dict[str, Any]:
    """How the numbers were computed, for whoever compares metrics.json files later."""
    return {
        "flow": f"OpenCV DIS (medium preset), forward-backward consistency alpha={FB_ALPHA} beta={FB_BETA}",
        "appearance": f"1-D EMD of CIELAB histograms (256 levels), Bhattacharyya on {HIST_BINS} bins",
        "pck_threshold": PCK_THRESHOLD,
        "detector": None if detector is None else getattr(detector, "name", type(detector).__name__),
    }


__all__ = ["compute_frame_metrics", "compute_job_metrics"]
