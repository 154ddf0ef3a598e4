"""Pose fidelity: does a detector find the requested keypoints in the rendered frame?

PCK@0.05 is the fraction of requested visible body keypoints that the detector finds within 5 %
of the image diagonal; next to it, the mean distance in pixels of the points found. The detector
is pose_sources' (``get_detector``: the bundled mediapipe one unless asked for OpenPose), so the
kinds, their options and their error messages are defined once, there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from pose_sources import Person, Pose, PoseDetector, get_detector
from pose_sources.detectors import DetectorKind

PCK_THRESHOLD = 0.05
# Cost of pairing two people who share no visible keypoint: never chosen over a real pairing.
_UNPAIRABLE = 1e9


@dataclass(frozen=True)
class PoseScore:
    pck: float  # share of requested visible body points found within the threshold
    mean_distance: Optional[float]  # pixels, over the requested points the detector found (None: none found)
    requested: int  # requested visible body points
    hits: int  # of those, found within the threshold
    found: int  # of those, detected at all (any distance)
    threshold_px: float


@dataclass
class PooledPoseScore:
    """Pose fidelity pooled over all requested keypoints of several frames (a job's summary)."""

    hits: int = 0
    requested: int = 0
    distances: list[tuple[float, int]] = field(default_factory=list)  # (mean distance, points found) per frame

    def add(self, score: PoseScore) -> None:
        self.hits += score.hits
        self.requested += score.requested
        if score.mean_distance is not None:
            self.distances.append((score.mean_distance, score.found))

    @property
    def pck(self) -> Optional[float]:
        return self.hits / self.requested if self.requested else None

    @property
    def mean_distance(self) -> Optional[float]:
        found = sum(n for _, n in self.distances)
        return sum(d * n for d, n in self.distances) / found if found else None


def body_points(person: Person) -> np.ndarray:
    """The person's COCO-18 body as an (18, 3) array of x, y, confidence (0: not visible)."""
    return np.asarray(person.body, dtype=np.float64)


def requests_points(pose: Optional[Pose]) -> bool:
    """Whether ``pose`` asks for at least one visible body point (else there is nothing to score)."""
    return pose is not None and any((body_points(p)[:, 2] > 0).any() for p in pose.people)


def _pairing_cost(requested: list[np.ndarray], detected: list[np.ndarray], limit: float) -> np.ndarray:
    """Mean cost per requested point of pairing requested person i with detected person j."""
    cost = np.full((len(requested), len(detected)), _UNPAIRABLE)
    for i, r in enumerate(requested):
        for j, d in enumerate(detected):
            both = (r[:, 2] > 0) & (d[:, 2] > 0)
            if both.any():
                # Unfound points cost the threshold's worth each, so a partial skeleton that
                # fits well does not beat a complete one that fits almost as well.
                dist = np.linalg.norm(r[both, :2] - d[both, :2], axis=1)
                missing = int((r[:, 2] > 0).sum() - both.sum())
                cost[i, j] = (dist.sum() + missing * 2 * limit) / max(1, (r[:, 2] > 0).sum())
    return cost


def pose_fidelity(requested: Pose, detected: Pose, threshold: float = PCK_THRESHOLD) -> PoseScore:
    """Compare a requested ``pose_sources.Pose`` with a detected one on the same picture.

    People are paired to minimise their mean keypoint distance (Hungarian); a requested person
    without a detected partner counts all its points as misses. Body points only (COCO-18).
    """
    # Imported here: scipy.optimize takes about half a second to import, and only pose jobs need it.
    from scipy.optimize import linear_sum_assignment

    w, h = requested.canvas
    if tuple(detected.canvas) != (w, h):
        detected = detected.fit_to((w, h), "stretch")
    limit = threshold * math.hypot(w, h)
    req = [body_points(p) for p in requested.people]
    det = [body_points(p) for p in detected.people]
    total = int(sum((r[:, 2] > 0).sum() for r in req))
    hits, distances = 0, []
    if req and det:
        cost = _pairing_cost(req, det, limit)
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols):
            if cost[i, j] >= _UNPAIRABLE:
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


def load_pose_detector(
    kind: Optional[DetectorKind] = None,
    detector_dir: Optional[str | os.PathLike] = None,
) -> tuple[Optional[PoseDetector], Optional[str]]:
    """(detector, None), or (None, reason) when no detector can be had here.

    ``kind`` None is pose_sources' default detector (the bundled mediapipe one). A missing
    package or weights folder is a reason, not an error: the metric is then not measured.
    """
    try:
        if kind is None:
            return get_detector(detector_dir=detector_dir), None
        return get_detector(kind, detector_dir), None
    except Exception as exc:  # noqa: BLE001 - any failure to build one means "no detector here"
        return None, f"no {kind or 'default'} pose detector ({type(exc).__name__}: {exc})"


__all__ = [
    "PCK_THRESHOLD", "PooledPoseScore", "PoseDetector", "PoseScore", "body_points", "load_pose_detector", "pose_fidelity",
    "requests_points",
]
