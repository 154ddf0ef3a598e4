"""What the metrics find in a job folder: result.json, the frames, masks, requested poses, the source.

Paths only and the few reads needed to find them; the numbers are computed elsewhere. A folder
that is not a finished job raises ``NotAFinishedJob`` naming what is missing and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pose_sources
from pose_sources import Pose

from flows.jobdir.layout import JOB_FILE, POSES_DIR, RESULT_FILE, InversionFolder, JobFolder

FrameFiles = list[tuple[int, Path]]  # (frame index, frames/frame_XXXX.png), in measuring order
PosesOrReason = tuple[Optional[list[Pose]], Optional[str]]  # (one pose per frame, None) or (None, why not)


class NotAFinishedJob(ValueError):
    """The folder is not a finished job folder (no readable result.json, or no frames)."""


def read_result(job_dir: Path) -> dict:
    """result.json of a finished job folder, as a dict."""
    path = JobFolder(job_dir).result
    if not job_dir.is_dir():
        raise NotAFinishedJob(f"{job_dir}: no such folder; give a job folder (<output.folder>/<job hash>)")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotAFinishedJob(f"{job_dir}: not a finished job folder (no {RESULT_FILE}); run the job "
                              "to the end first, or give the folder <output.folder>/<job hash>") from None
    except (OSError, ValueError) as exc:
        raise NotAFinishedJob(f"{path}: unreadable ({exc}); run the job again to rewrite it") from None
    if not isinstance(doc, dict):
        raise NotAFinishedJob(f"{path}: expected a JSON object; run the job again to rewrite it")
    return doc


def inversion_dir_of(result: dict) -> Optional[Path]:
    return Path(result["inversion_dir"]) if result.get("inversion_dir") else None


def job_hash_of(result: dict) -> Optional[str]:
    return result.get("job_hash") if isinstance(result.get("job_hash"), str) else None


def finished_frame_files(job_dir: Path, result: dict) -> FrameFiles:
    """Every frames/frame_XXXX.png, by index; as many as result.json says the job rendered."""
    files = JobFolder(job_dir).frames_on_disk()
    if not files:
        raise NotAFinishedJob(f"{job_dir}: no frames/frame_XXXX.png; the job has not rendered any frame")
    expected = result.get("frame_count")
    if isinstance(expected, int) and expected != len(files):
        raise NotAFinishedJob(f"{job_dir}: result.json says {expected} frames, {len(files)} are in frames/; "
                              "run the job again to complete it")
    return files


def rendered_frame_files(job_dir: Path, indices: list[int]) -> FrameFiles:
    """frames/frame_XXXX.png for each index, in the order given; all must be on disk."""
    files = [(int(i), JobFolder(job_dir).frame(int(i))) for i in indices]
    missing = [str(p) for _, p in files if not p.is_file()]
    if missing:
        raise NotAFinishedJob(f"{job_dir}: frames not rendered yet: {', '.join(missing)}; render them first")
    return files


def inverted_source(inversion_dir: Optional[Path]) -> Optional[Path]:
    """The picture the engine inverted, when the inversion folder still holds it."""
    if inversion_dir is not None and InversionFolder(inversion_dir).source.is_file():
        return InversionFolder(inversion_dir).source
    return None


def missing_source_reason(inversion_dir: Optional[Path]) -> str:
    where = InversionFolder(inversion_dir).source if inversion_dir else "the inversion folder (not named in result.json)"
    return f"no source image: {where} is gone; pass the source picture"


def source_decode_file(job_dir: Path, inversion_dir: Optional[Path]) -> Optional[Path]:
    """The source branch's decode: a hand-given one in the job folder first, else the inversion's."""
    candidates = [JobFolder(job_dir).source_decode]
    if inversion_dir is not None:
        candidates.append(InversionFolder(inversion_dir).source_decode)
    return next((path for path in candidates if path.is_file()), None)


def mask_files(job_dir: Path, indices: list[int]) -> tuple[Optional[Path], Optional[list[Optional[Path]]]]:
    """(masks/source.png or None, masks/frame_XXXX.png per index or None when there is none at all)."""
    folder = JobFolder(job_dir)
    source = folder.source_mask
    frames = [folder.frame_mask(i) for i in indices]
    have_frames = [f if f.is_file() else None for f in frames]
    return (source if source.is_file() else None), (have_frames if any(have_frames) else None)


def requested_poses(job_dir: Path, indices: list[int], size: tuple[int, int]) -> PosesOrReason:
    """Requested keypoints per frame: poses/pose_XXXX.json if the flow wrote them, else the job's
    keypoint pose spec read again (OpenPose JSON, keyframes)."""
    files = [JobFolder(job_dir).pose_keypoints(i) for i in indices]
    if all(f.is_file() for f in files):
        try:
            return [pose_sources.read_openpose_json(f).fit_to(size, "stretch") for f in files], None
        except Exception as exc:  # noqa: BLE001
            return None, f"cannot read the requested keypoints in {POSES_DIR}/ ({exc})"
    return _poses_from_job_spec(job_dir, indices, size)


def _poses_from_job_spec(job_dir: Path, indices: list[int], size: tuple[int, int]) -> PosesOrReason:
    try:
        job = json.loads(JobFolder(job_dir).job_file.read_text()).get("job") or {}
    except (OSError, ValueError, AttributeError):
        return None, f"no readable {JOB_FILE}, so the requested poses are unknown"
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


__all__ = [
    "FrameFiles", "NotAFinishedJob", "PosesOrReason", "finished_frame_files",
    "inversion_dir_of", "inverted_source", "job_hash_of", "mask_files", "missing_source_reason", "read_result",
    "rendered_frame_files", "requested_poses", "source_decode_file",
]
