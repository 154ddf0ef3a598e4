"""Weight-free quality metrics of a job's frames: flicker, appearance, pose fidelity, source PSNR.

Pure functions on pictures (numpy, OpenCV, scikit-image); no Prefect here. The flow calls
``compute_job_metrics`` on a finished job folder and ``write_metrics`` puts ``metrics.json``
beside ``result.json``; ``masactrl-animate metrics JOB_DIR`` does the same for any finished job.

What the numbers mean (all computed on 8-bit RGB):

- **warp error** (per consecutive pair, 0-255): dense optical flow (OpenCV DIS) from frame i
  to i+1 and back; frame i+1 is warped onto frame i and the mean absolute difference is taken
  over the pixels whose flow is forward-backward consistent (the test of Sundaram et al. 2010,
  also used by Ruder et al. for video style transfer: ``|F + B(x+F)|^2 < 0.01 (|F|^2 + |B|^2) + 0.5``)
  and whose target lies inside the picture. Motion that the flow explains costs nothing; flicker,
  popping textures and colour jumps do. When no pixel is consistent (the two frames share
  nothing), every in-bounds pixel counts. **frame difference** is the plain mean absolute
  difference without any warping (large for any motion, so read the two side by side).
- **appearance distance** (per frame, CIELAB units): 1-D earth mover's distance between the
  source's and the frame's L*, a*, b* histograms, averaged over the three channels: how far, on
  average, the colours moved. Inside the subject mask when one is known, over the whole frame
  otherwise. Also the Bhattacharyya distance of 32-bin histograms (0 same, 1 disjoint).
- **background SSIM** (per frame, only with a mask): SSIM of source and frame averaged over the
  pixels outside the subject in both.
- **pose fidelity** (per frame, only with requested keypoints and a detector): PCK@0.05, the
  fraction of requested visible body keypoints that the detector finds within 5 % of the image
  diagonal, and the mean distance in pixels of the points found.
- **source PSNR** (dB): source picture vs the source branch's final decode.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, Union

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from flows.jobdir import frames_io

METRICS_FILE = "metrics.json"
METRICS_VERSION = 1
# Optional inputs a flow may leave in the job folder; compute_job_metrics picks them up.
SOURCE_DECODE_FILE = "source_decode.png"  # the source branch's final decode (in the job or inversion folder)
MASKS_DIR = "masks"  # masks/source.png and masks/frame_XXXX.png: subject masks (white = subject)
SOURCE_FILE = "source.png"  # in the inversion folder: the picture the engine inverted

PCK_THRESHOLD = 0.05
HIST_BINS = 32  # Bhattacharyya histograms; the EMD uses all 256 levels
# Forward-backward consistency test (Sundaram et al. 2010).
FB_ALPHA, FB_BETA = 0.01, 0.5

ImageLike = Union[Image.Image, np.ndarray, str, os.PathLike]


class NotAFinishedJob(ValueError):
    """The folder is not a finished job folder (no readable result.json, or no frames)."""


class PoseDetector(Protocol):
    def detect(self, image: Image.Image) -> Any:  # -> pose_sources.Pose
        ...


# --------------------------------------------------------------------------- pictures


def as_rgb(image: ImageLike, what: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 array from a PIL image, a path or an array (gray, RGB or RGBA)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            image = frames_io.load_rgb(image)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{what}: cannot read {str(image)!r} ({exc})") from None
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected an (H, W, 3) picture, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def as_mask(mask: ImageLike, size: tuple[int, int], what: str = "mask") -> np.ndarray:
    """A boolean (H, W) mask for a picture of ``size`` = (width, height); white / True / > 0.5 = subject."""
    if isinstance(mask, (str, os.PathLike)):
        try:
            with Image.open(mask) as img:
                mask = img.convert("L")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{what}: cannot read {str(mask)!r} ({exc})") from None
    if isinstance(mask, Image.Image):
        if mask.size != tuple(size):
            mask = mask.convert("L").resize(tuple(size), Image.Resampling.NEAREST)
        return np.asarray(mask.convert("L")) > 127
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr.mean(axis=2)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected an (H, W) mask, got shape {arr.shape}")
    if arr.dtype == bool:
        binary = arr
    elif np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
        binary = arr > 0.5
    else:
        binary = arr > 127
    if binary.shape != (size[1], size[0]):
        binary = cv2.resize(binary.astype(np.uint8), tuple(size), interpolation=cv2.INTER_NEAREST) > 0
    return binary


def _same_size(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    h, w = reference.shape[:2]
    if other.shape[:2] == (h, w):
        return other
    return cv2.resize(other, (w, h), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- flicker


def optical_flow(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Dense flow F (H, W, 2) from ``first`` to ``second``: first(x) ~ second(x + F(x))."""
    a = cv2.cvtColor(as_rgb(first), cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(as_rgb(second), cv2.COLOR_RGB2GRAY)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(a, b, None)


def _sample_at(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image(x + flow(x)), bilinear; points outside the picture read as 0 (they are masked anyway)."""
    h, w = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, grid_x + flow[..., 0], grid_y + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def consistent_flow_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Pixels whose forward flow lands inside the picture and is undone by the backward flow there."""
    h, w = forward.shape[:2]
    back_at = _sample_at(np.ascontiguousarray(backward, dtype=np.float32), forward)
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tx, ty = grid_x + forward[..., 0], grid_y + forward[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    loop = np.sum((forward + back_at) ** 2, axis=2)
    scale = np.sum(forward**2, axis=2) + np.sum(back_at**2, axis=2)
    return inside & (loop < FB_ALPHA * scale + FB_BETA)


@dataclass(frozen=True)
class PairFlicker:
    warp_error: float  # 0-255, over consistent pixels
    frame_difference: float  # 0-255, plain
    consistent_fraction: float  # share of pixels the warp error is computed over (0: fell back to all in-bounds)


def pair_flicker(first: ImageLike, second: ImageLike) -> PairFlicker:
    """Warp error and plain difference between two consecutive frames (see the module docstring)."""
    a, b = as_rgb(first, "first frame"), as_rgb(second, "second frame")
    b = _same_size(a, b)
    fwd = optical_flow(a, b)
    bwd = optical_flow(b, a)
    mask = consistent_flow_mask(fwd, bwd)
    warped = _sample_at(b, fwd).astype(np.float32)
    error = np.abs(a.astype(np.float32) - warped).mean(axis=2)
    fraction = float(mask.mean())
    if not mask.any():
        h, w = fwd.shape[:2]
        grid_x, grid_y = np.meshgrid(np.arange(w), np.arange(h))
        tx, ty = grid_x + fwd[..., 0], grid_y + fwd[..., 1]
        mask = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
        if not mask.any():
            mask = np.ones_like(mask)
    difference = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())
    return PairFlicker(float(error[mask].mean()), difference, fraction)


# --------------------------------------------------------------------------- appearance


def _lab(rgb: np.ndarray) -> np.ndarray:
    # OpenCV's 8-bit Lab: L scaled to 0-255, a and b offset by 128.
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)


_LAB_UNITS = np.array([100.0 / 255.0, 1.0, 1.0])  # 8-bit Lab step -> CIELAB units per channel


@dataclass(frozen=True)
class Appearance:
    emd: float  # mean over L*, a*, b* of the 1-D earth mover's distance, CIELAB units
    emd_per_channel: tuple[float, float, float]
    bhattacharyya: float  # mean over channels, 0..1
    region: Literal["subject", "frame"]
    background_ssim: Optional[float]  # only with a mask and a non-empty shared background


def _histograms(lab: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    pixels = lab[mask]
    return [np.bincount(pixels[:, c], minlength=256).astype(np.float64) for c in range(3)]


def appearance(
    source: ImageLike,
    frame: ImageLike,
    source_mask: Optional[ImageLike] = None,
    frame_mask: Optional[ImageLike] = None,
) -> Appearance:
    """Colour distance of ``frame`` from ``source``: inside the subject masks when given (one
    mask given = used for both), over the whole pictures otherwise; plus background SSIM."""
    frm = as_rgb(frame, "frame")
    src = _same_size(frm, as_rgb(source, "source"))
    size = (frm.shape[1], frm.shape[0])
    if source_mask is None and frame_mask is None:
        m_src = m_frm = np.ones(frm.shape[:2], dtype=bool)
        region: Literal["subject", "frame"] = "frame"
    else:
        m_src = as_mask(source_mask if source_mask is not None else frame_mask, size, "source mask")
        m_frm = as_mask(frame_mask if frame_mask is not None else source_mask, size, "frame mask")
        region = "subject"
        if not m_src.any() or not m_frm.any():
            raise ValueError("mask: the subject mask is empty; give a mask with white subject pixels, or no mask")
    h_src, h_frm = _histograms(_lab(src), m_src), _histograms(_lab(frm), m_frm)
    emd, bhat = [], []
    for c in range(3):
        p, q = h_src[c] / h_src[c].sum(), h_frm[c] / h_frm[c].sum()
        emd.append(float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() * _LAB_UNITS[c]))
        pb, qb = p.reshape(HIST_BINS, -1).sum(axis=1), q.reshape(HIST_BINS, -1).sum(axis=1)
        bhat.append(float(math.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(pb * qb)))))))
    ssim = None
    if region == "subject":
        ssim = masked_ssim(src, frm, ~m_src & ~m_frm)
    return Appearance(float(np.mean(emd)), tuple(emd), float(np.mean(bhat)), region, ssim)


def masked_ssim(a: ImageLike, b: ImageLike, region: np.ndarray) -> Optional[float]:
    """Mean of the SSIM map of two pictures over ``region`` (None when the region is empty)."""
    from skimage.metrics import structural_similarity

    x, y = as_rgb(a), as_rgb(b)
    y = _same_size(x, y)
    if not region.any():
        return None
    side = min(x.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return None
    _, full = structural_similarity(x, y, channel_axis=2, data_range=255, full=True, win_size=win)
    return float(full.mean(axis=2)[region].mean())


# --------------------------------------------------------------------------- source reconstruction


def psnr(reference: ImageLike, test: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB of 8-bit pictures (inf when identical)."""
    x = as_rgb(reference, "reference").astype(np.float64)
    y = _same_size(x, as_rgb(test, "test")).astype(np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


# --------------------------------------------------------------------------- pose fidelity


@dataclass(frozen=True)
class PoseScore:
    pck: float  # share of requested visible body points found within the threshold
    mean_distance: Optional[float]  # pixels, over the requested points the detector found (None: none found)
    requested: int  # requested visible body points
    hits: int  # of those, found within the threshold
    found: int  # of those, detected at all (any distance)
    threshold_px: float


def _body(person) -> np.ndarray:
    return np.asarray(person.body, dtype=np.float64)


def pose_fidelity(requested, detected, threshold: float = PCK_THRESHOLD) -> PoseScore:
    """Compare a requested ``pose_sources.Pose`` with a detected one on the same picture.

    People are paired to minimise their mean keypoint distance (Hungarian); a requested person
    without a detected partner counts all its points as misses. Body points only (COCO-18).
    """
    from scipy.optimize import linear_sum_assignment

    w, h = requested.canvas
    if tuple(detected.canvas) != (w, h):
        detected = detected.fit_to((w, h), "stretch")
    limit = threshold * math.hypot(w, h)
    req = [_body(p) for p in requested.people]
    det = [_body(p) for p in detected.people]
    total = int(sum((r[:, 2] > 0).sum() for r in req))
    hits, distances = 0, []
    if req and det:
        cost = np.full((len(req), len(det)), 1e9)
        for i, r in enumerate(req):
            for j, d in enumerate(det):
                both = (r[:, 2] > 0) & (d[:, 2] > 0)
                if both.any():
                    # Unfound points cost the threshold's worth each, so a partial skeleton that
                    # fits well does not beat a complete one that fits almost as well.
                    dist = np.linalg.norm(r[both, :2] - d[both, :2], axis=1)
                    missing = int((r[:, 2] > 0).sum() - both.sum())
                    cost[i, j] = (dist.sum() + missing * 2 * limit) / max(1, (r[:, 2] > 0).sum())
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols):
            if cost[i, j] >= 1e9:
                continue
            both = (req[i][:, 2] > 0) & (det[j][:, 2] > 0)
            dist = np.linalg.norm(req[i][both, :2] - det[j][both, :2], axis=1)
            distances.extend(dist.tolist())
            hits += int((dist <= limit).sum())
    return PoseScore(
        pck=hits / total if total else 0.0,
        mean_distance=float(np.mean(distances)) if distances else None,
        requested=total,
        hits=hits,
        found=len(distances),
        threshold_px=limit,
    )


def load_pose_detector(kind: str = "mediapipe", detector_dir: Optional[str | os.PathLike] = None):
    """(detector, None), or (None, reason) when no detector can be had here.

    Uses ``pose_sources.get_detector`` (bundled mediapipe by default); where that is not
    available, controlnet_aux's OpenPose detector from ``detector_dir``.
    """
    try:
        import pose_sources
    except ImportError as exc:  # pragma: no cover - pose_sources is part of the project
        return None, f"pose_sources cannot be imported ({exc})"
    get_detector = getattr(pose_sources, "get_detector", None)
    if get_detector is not None:
        try:
            return get_detector(kind=kind, detector_dir=detector_dir), None
        except Exception as exc:  # noqa: BLE001 - a missing package or weights folder: not measured
            return None, f"no {kind} pose detector ({type(exc).__name__}: {exc})"
    if kind != "openpose" or detector_dir is None:
        return None, (f"no {kind} pose detector in this installation; give an OpenPose weights folder "
                      "(detector kind 'openpose' with detector_dir)")
    try:
        detector = pose_sources.load_openpose_detector(detector_dir)
    except Exception as exc:  # noqa: BLE001
        return None, f"OpenPose detector from {detector_dir}: {exc}"
    return _OpenPoseAdapter(detector), None


class _OpenPoseAdapter:
    def __init__(self, detector):
        self._detector = detector

    def detect(self, image: Image.Image):
        from pose_sources.video import detect_pose

        return detect_pose(self._detector, np.asarray(image.convert("RGB")))


# --------------------------------------------------------------------------- the job's numbers


class _Schema(BaseModel):
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


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _read_result(job_dir: Path) -> dict:
    path = job_dir / frames_io.RESULT_FILE
    if not job_dir.is_dir():
        raise NotAFinishedJob(f"{job_dir}: no such folder; give a job folder (<output.folder>/<job hash>)")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotAFinishedJob(f"{job_dir}: not a finished job folder (no {frames_io.RESULT_FILE}); run the job "
                              "to the end first, or give the folder <output.folder>/<job hash>") from None
    except (OSError, ValueError) as exc:
        raise NotAFinishedJob(f"{path}: unreadable ({exc}); run the job again to rewrite it") from None
    if not isinstance(doc, dict):
        raise NotAFinishedJob(f"{path}: expected a JSON object; run the job again to rewrite it")
    return doc


def _frame_files(job_dir: Path, result: dict) -> list[tuple[int, Path]]:
    files = []
    for p in sorted((job_dir / frames_io.FRAMES_DIR).glob("frame_*.png")):
        stem = p.stem[len("frame_"):]
        if stem.isdigit():
            files.append((int(stem), p))
    if not files:
        raise NotAFinishedJob(f"{job_dir}: no frames/frame_XXXX.png; the job has not rendered any frame")
    expected = result.get("frame_count")
    if isinstance(expected, int) and expected != len(files):
        raise NotAFinishedJob(f"{job_dir}: result.json says {expected} frames, {len(files)} are in frames/; "
                              "run the job again to complete it")
    return files


def _requested_poses(job_dir: Path, indices: list[int], size: tuple[int, int]) -> tuple[Optional[list], Optional[str]]:
    """Requested keypoints per frame: poses/pose_XXXX.json if the flow wrote them, else the job's
    keypoint pose spec read again (OpenPose JSON, keyframes)."""
    import pose_sources

    files = [job_dir / frames_io.POSES_DIR / f"pose_{i:04d}.json" for i in indices]
    if all(f.is_file() for f in files):
        try:
            return [pose_sources.read_openpose_json(f).fit_to(size, "stretch") for f in files], None
        except Exception as exc:  # noqa: BLE001
            return None, f"cannot read the requested keypoints in {frames_io.POSES_DIR}/ ({exc})"
    try:
        job = json.loads((job_dir / frames_io.JOB_FILE).read_text()).get("job") or {}
    except (OSError, ValueError, AttributeError):
        return None, f"no readable {frames_io.JOB_FILE}, so the requested poses are unknown"
    spec = (job.get("frames") or {}).get("poses")
    if not spec:
        return None, "the job has no poses"
    kind = spec.get("kind", "openpose_json")
    if kind not in ("openpose_json", "keyframes"):
        return None, (f"the job's poses are {kind!r}, which keeps no keypoints in the job folder; "
                      "pose fidelity needs OpenPose JSON or keyframe poses")
    try:
        seq = pose_sources.load(spec, size=size)
    except Exception as exc:  # noqa: BLE001 - files moved or changed since the job ran
        return None, f"cannot read the job's pose files again ({exc})"
    poses = list(seq)
    if len(poses) != len(indices):
        return None, f"the job's pose source now gives {len(poses)} poses for {len(indices)} frames"
    return [poses[i] for i in indices], None


def _mask_files(job_dir: Path, indices: list[int]) -> tuple[Optional[Path], Optional[list[Optional[Path]]]]:
    folder = job_dir / MASKS_DIR
    source = folder / "source.png"
    frames = [folder / f"frame_{i:04d}.png" for i in indices]
    have_frames = [f if f.is_file() else None for f in frames]
    return (source if source.is_file() else None), (have_frames if any(have_frames) else None)


def compute_job_metrics(
    job_dir: str | os.PathLike,
    *,
    source_image: Optional[ImageLike] = None,
    source_decode: Optional[ImageLike] = None,
    source_mask: Optional[ImageLike] = None,
    frame_masks: Optional[Sequence[Optional[ImageLike]]] = None,
    requested_poses: Optional[Sequence[Any]] = None,
    detector: Optional[PoseDetector] = None,
    detector_kind: str = "mediapipe",
    detector_dir: Optional[str | os.PathLike] = None,
) -> JobMetrics:
    """Every metric of a finished job folder.

    Defaults, when an argument is None: the source is ``<inversion_dir>/source.png`` (the
    inversion folder named in result.json); the source decode is ``source_decode.png`` in the job
    folder, else in the inversion folder; masks are ``masks/source.png`` and
    ``masks/frame_XXXX.png`` (one given = used for both sides); requested poses are
    ``poses/pose_XXXX.json`` or the job's keypoint pose spec; the detector is
    ``load_pose_detector(detector_kind, detector_dir)``, loaded only when there are poses.
    What cannot be measured is named in ``not_measured`` with the reason.
    """
    job_dir = Path(job_dir).absolute()
    result = _read_result(job_dir)
    files = _frame_files(job_dir, result)
    inversion_dir = Path(result["inversion_dir"]) if result.get("inversion_dir") else None
    job_hash = result.get("job_hash") if isinstance(result.get("job_hash"), str) else None
    return _measure(job_dir, files, inversion_dir, job_hash, source_image=source_image, source_decode=source_decode,
                    source_mask=source_mask, frame_masks=frame_masks, requested_poses=requested_poses,
                    detector=detector, detector_kind=detector_kind, detector_dir=detector_dir)


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
    files = [(int(i), frames_io.frame_path(job_dir, int(i))) for i in indices]
    missing = [str(p) for _, p in files if not p.is_file()]
    if missing:
        raise NotAFinishedJob(f"{job_dir}: frames not rendered yet: {', '.join(missing)}; render them first")
    return _measure(job_dir, files, Path(inversion_dir) if inversion_dir else None, job_hash, **options)


def _measure(
    job_dir: Path,
    files: list[tuple[int, Path]],
    inversion_dir: Optional[Path],
    job_hash: Optional[str],
    *,
    source_image: Optional[ImageLike] = None,
    source_decode: Optional[ImageLike] = None,
    source_mask: Optional[ImageLike] = None,
    frame_masks: Optional[Sequence[Optional[ImageLike]]] = None,
    requested_poses: Optional[Sequence[Any]] = None,
    detector: Optional[PoseDetector] = None,
    detector_kind: str = "mediapipe",
    detector_dir: Optional[str | os.PathLike] = None,
) -> JobMetrics:
    t0 = time.perf_counter()
    indices = [i for i, _ in files]
    frames = [as_rgb(p, f"frame {p.name}") for _, p in files]
    height, width = frames[0].shape[:2]
    not_measured: dict[str, str] = {}
    rows = [FrameMetrics(index=i, file=str(p.relative_to(job_dir))) for i, p in files]

    pairs = []
    for k in range(len(frames) - 1):
        f = pair_flicker(frames[k], frames[k + 1])
        pairs.append(PairMetrics(first=indices[k], second=indices[k + 1], warp_error=f.warp_error,
                                 frame_difference=f.frame_difference, consistent_fraction=f.consistent_fraction))
    if not pairs:
        not_measured["warp_error"] = "one frame only: no consecutive pair"

    if source_image is None and inversion_dir is not None and (inversion_dir / SOURCE_FILE).is_file():
        source_image = inversion_dir / SOURCE_FILE
    auto_source_mask, auto_frame_masks = _mask_files(job_dir, indices)
    source_mask = source_mask if source_mask is not None else auto_source_mask
    frame_masks = list(frame_masks) if frame_masks is not None else auto_frame_masks
    if frame_masks is not None and len(frame_masks) != len(frames):
        raise ValueError(f"frame_masks: {len(frame_masks)} masks for {len(frames)} frames; give one per frame")
    src = None
    if source_image is None:
        where = inversion_dir / SOURCE_FILE if inversion_dir else "the inversion folder (not named in result.json)"
        not_measured["appearance"] = f"no source image: {where} is gone; pass the source picture"
    else:
        src = as_rgb(source_image, "source image")
        for k, row in enumerate(rows):
            fm = frame_masks[k] if frame_masks is not None else None
            a = appearance(src, frames[k], source_mask, fm)
            row.appearance_emd, row.appearance_bhattacharyya = a.emd, a.bhattacharyya
            row.appearance_region, row.background_ssim = a.region, a.background_ssim
        if source_mask is None and frame_masks is None:
            not_measured["background_ssim"] = "no subject mask (give mask images, or masks/ in the job folder)"

    psnr_db = None
    if source_decode is None:
        for folder in (job_dir, inversion_dir):
            if folder is not None and (folder / SOURCE_DECODE_FILE).is_file():
                source_decode = folder / SOURCE_DECODE_FILE
                break
    if src is None:
        not_measured["source_psnr"] = "no source image"
    elif source_decode is None:
        not_measured["source_psnr"] = f"no {SOURCE_DECODE_FILE} (the source branch's decode) in the job folder"
    else:
        psnr_db = psnr(src, source_decode)

    poses, reason = (list(requested_poses), None) if requested_poses is not None else \
        _requested_poses(job_dir, indices, (width, height))
    if poses is not None and len(poses) != len(frames):
        raise ValueError(f"requested_poses: {len(poses)} poses for {len(frames)} frames; give one per frame")
    if poses is not None and not any(p is not None and p.people for p in poses):
        poses, reason = None, "no requested keypoints in any frame"
    if poses is not None and detector is None:
        detector, reason = load_pose_detector(detector_kind, detector_dir)
    pooled_hits = pooled_total = 0
    pooled_dist: list[tuple[float, int]] = []
    if poses is not None and detector is not None:
        for k, row in enumerate(rows):
            if poses[k] is None or not any((_body(p)[:, 2] > 0).any() for p in poses[k].people):
                continue  # nothing requested in this frame: no detection, no score
            found = detector.detect(Image.fromarray(frames[k]))
            score = pose_fidelity(poses[k].fit_to((width, height), "stretch"), found)
            row.pose_pck, row.pose_mean_distance_px, row.pose_points = score.pck, score.mean_distance, score.requested
            pooled_hits += score.hits
            pooled_total += score.requested
            if score.mean_distance is not None:
                pooled_dist.append((score.mean_distance, score.found))
    else:
        not_measured["pose"] = reason or "no pose detector"

    found_total = sum(n for _, n in pooled_dist)
    summary = MetricsSummary(
        frames=len(frames),
        warp_error=_mean([p.warp_error for p in pairs]),
        frame_difference=_mean([p.frame_difference for p in pairs]),
        appearance_emd=_mean([r.appearance_emd for r in rows]),
        appearance_bhattacharyya=_mean([r.appearance_bhattacharyya for r in rows]),
        appearance_region=rows[0].appearance_region,
        background_ssim=_mean([r.background_ssim for r in rows]),
        pose_pck=pooled_hits / pooled_total if pooled_total else None,
        pose_mean_distance_px=sum(d * n for d, n in pooled_dist) / found_total if found_total else None,
        source_psnr_db=psnr_db,
    )
    return JobMetrics(
        job_dir=str(job_dir), job_hash=job_hash, width=width, height=height, frames=rows, pairs=pairs,
        summary=summary, not_measured=not_measured,
        method={"flow": "OpenCV DIS (medium preset), forward-backward consistency "
                        f"alpha={FB_ALPHA} beta={FB_BETA}",
                "appearance": "1-D EMD of CIELAB histograms (256 levels), Bhattacharyya on "
                              f"{HIST_BINS} bins", "pck_threshold": PCK_THRESHOLD,
                "detector": None if "pose" in not_measured else getattr(detector, "name", type(detector).__name__)},
        seconds=round(time.perf_counter() - t0, 3),
    )


def write_metrics(job_dir: str | os.PathLike, metrics: JobMetrics) -> Path:
    """Write ``metrics.json`` atomically next to result.json."""
    return frames_io.write_json_atomic(Path(job_dir) / METRICS_FILE, json.loads(metrics.model_dump_json()))


def read_metrics(job_dir: str | os.PathLike) -> JobMetrics:
    return JobMetrics.model_validate_json((Path(job_dir) / METRICS_FILE).read_text())


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
    "METRICS_FILE", "METRICS_VERSION", "Appearance", "FrameMetrics", "JobMetrics", "MetricsSummary",
    "NotAFinishedJob", "PairFlicker", "PairMetrics", "PoseDetector", "PoseScore", "appearance", "as_mask", "as_rgb",
    "compute_frame_metrics", "compute_job_metrics", "consistent_flow_mask", "load_pose_detector", "masked_ssim",
    "optical_flow",
    "pair_flicker", "pose_fidelity", "psnr", "read_metrics", "summary_line", "write_metrics",
]
