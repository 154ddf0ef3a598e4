"""The one owner of the output folder's layout: every folder and file name, and the hash prefix.

Nothing else in ``flows/`` spells these names (``tests/test_job_folder_layout.py`` checks it):
it asks :class:`JobFolder`, :class:`InversionFolder` or :class:`SweepFolder` for a path. A name
changed here breaks every job folder already on disk (resumed runs render again, the inbox runs
finished jobs again): bump ``flows.job.plan.PLAN_FORMAT`` with it.

``<output.folder>/`` (the job's ``output.folder``) holds::

    <job hash[:16]>/                    JobFolder: one job, named by flows.job.plan.job_hash
        job.json                        plan_job: {"job_hash", "inversion_key", "frame_keys", "job"},
                                        the job as submitted (for people and for the metrics' pose
                                        fidelity) and the store entries it uses (``cache prune``
                                        keeps them); written before the job lock is taken
        poses/pose_0000.png             plan_job: the resolved pose map of frame 0 (jobs with poses)
        poses/pose_0000.json            plan_job: frame 0's requested keypoints as OpenPose JSON
                                        (keypoint pose sources); the metrics' pose fidelity reads them
        poses/index.json                plan_job, after the maps: {"count", "files"}: poses complete
        frames/frame_0000.png           render-chunk (frame_store.present): frame 0, the store's entry
        frames/frame_0000.sha256        written right after its PNG: ``<sha256>  frame_0000.png``
                                        (sha256sum format); a frame without it is unverified
        running.json                    animate, while it renders (ghost_runs.running): flow run id,
                                        pid, host; removed at the end. A later run of the job that
                                        finds it from a dead process marks that run Crashed
        animation.gif, animation.mp4    stitch (output.gif / output.mp4)
        contact_sheet.png               stitch: every frame on one grid
        side_by_side.png                stitch, jobs with poses: pose | frame pairs on one grid
        side_by_side.gif, .mp4          the same pairs animated (output.gif / output.mp4)
        inbetweens/between_0003_0004_1of2.png
                                        stitch (output.interpolate: k), derived, never in the frame
                                        cache: in-between 1 of k - 1 of frames 3 and 4, stamped with
                                        their digests (flows.jobdir.inbetween); made again when missing
        playback.json                   stitch: the files the GIF/MP4 play, in order, each marked
                                        rendered or interpolated, and the loop mode (the metrics read it)
        metrics.json                    measure task and `masactrl-animate metrics` (flows.quality)
        result.json                     animate, last: the AnimationResult. Its presence (outputs and
                                        verified frames still there) means "finished": the inbox
                                        skips the job, the CLI and the metrics read it
        masks/source.png,               never written by the flows: optional subject masks (white =
        masks/frame_0000.png            subject) a person or benchmarks/metrics.py puts there; the
                                        metrics then measure appearance inside and SSIM outside them
        source_decode.png               never written by the flows: read by the metrics before the
                                        inversion folder's (a decode given by hand)
    inversions/<inversion key[:16]>/    InversionFolder: named by the hash of the inversion request
        source.png                      invert-source: the picture inverted, at the canvas size
        source_decode.png               invert-source: the source branch's final decode (the
                                        metrics' source PSNR compares the two)
        inversion.safetensors           InvertedSource.save: the DDIM trajectory
        inversion.json                  InvertedSource.save: its meta data and digest
                                        (masactrl_engine.inversion.TENSOR_FILE / META_FILE)
    frame_store/<frame key[:16]>.png    FrameStore: every rendered frame once, named by its content key
                                        (flows.job.plan.frame_keys: what its pixels depend on); a job
                                        folder's frames/frame_0003.png is a hard link to (or, where the
                                        file system has none, a copy of) its entry
    frame_store/<frame key[:16]>.sha256 the entry's digest, written right after it (as in frames/)
    <job name>/latest                   VersionsFolder, named jobs only: a symbolic link to the newest
                                        job folder of that name
    <job name>/versions.json            VersionsFolder: [{"job_hash", "finished"}], oldest first
    sweeps/<sweep hash[:16]>/           SweepFolder: one sweep (flows/sweep.py); cells render into
                                        ordinary job folders beside it
        cells/cell_00.gif               the cell's rendered frames as a GIF
        cells/cell_00.metrics.json      the cell's metrics (not in its job folder: only some frames)
        grid.png                        the labelled grid of every cell
        ranking.json                    the ranking table
        sweep.json                      the SweepResult
        best_job.yaml                   the best cell as a complete job file (run / submit)
    .<folder name>.lock                 folder_lock, beside each job and inversion folder: an
                                        identical run waits on it

Every file is written by ``frames_io.atomic_write`` under a hidden temporary name beside it,
``.<stem>.<token>.tmp<suffix>`` (:func:`temp_path`), and moved into place; ``stale_files`` removes
those a killed run left (:data:`TEMP_NAME`).

Plain paths, no I/O: ``JobFolder(path).frame(3)`` is ``path/frames/frame_0003.png`` whether or not
it exists.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Job, inversion and sweep folders are named by the first 16 hex digits of their content hash;
# artifact keys and log lines show the same prefix, so they lead back to the folder.
HASH_CHARS = 16

JOB_FILE = "job.json"
FRAMES_DIR = "frames"
POSES_DIR = "poses"
POSES_INDEX = "index.json"
DIGEST_SUFFIX = ".sha256"
ANIMATION_STEM = "animation"
CONTACT_SHEET_FILE = "contact_sheet.png"
SIDE_BY_SIDE_STEM = "side_by_side"
METRICS_FILE = "metrics.json"
RESULT_FILE = "result.json"
RUNNING_FILE = "running.json"
MASKS_DIR = "masks"

# Derived frames (in-betweens) and what the stitched animation plays.
INBETWEENS_DIR = "inbetweens"
PLAYBACK_FILE = "playback.json"

INVERSIONS_DIR = "inversions"
SOURCE_FILE = "source.png"
SOURCE_DECODE_FILE = "source_decode.png"

FRAME_STORE_DIR = "frame_store"
LATEST_LINK = "latest"
VERSIONS_FILE = "versions.json"

SWEEPS_DIR = "sweeps"
CELLS_DIR = "cells"
GRID_FILE = "grid.png"
RANKING_FILE = "ranking.json"
SWEEP_FILE = "sweep.json"
BEST_JOB_FILE = "best_job.yaml"

# Top-level names of the output folder that a job name must not take (it names a versions folder).
RESERVED_NAMES = frozenset({INVERSIONS_DIR, SWEEPS_DIR, FRAME_STORE_DIR})

# ".<stem>.<token>.tmp<.suffix>": frames_io's hex token, or tempfile.mkstemp's 8 characters.
TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.(?P<token>[A-Za-z0-9_]{6,32})\.tmp(?P<suffix>\.[A-Za-z0-9]{1,8})?$")

_FRAME_NAME = re.compile(r"frame_(\d+)\.png")

PathLike = str | os.PathLike


def folder_name(digest: str) -> str:
    """The folder name of a content hash (job, inversion, sweep): its first ``HASH_CHARS`` digits."""
    return digest[:HASH_CHARS]


def frame_name(index: int) -> str:
    """``frame_0003.png``: a frame's file name, in ``frames/`` and in ``masks/``."""
    return f"frame_{index:04d}.png"


def frame_index(path: PathLike) -> int | None:
    """The index of a frame file (``frame_0003.png`` -> 3); None for any other name."""
    match = _FRAME_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def pose_name(index: int) -> str:
    """``pose_0003.png``: a pose map's file name in ``poses/``."""
    return f"pose_{index:04d}.png"


def digest_path(frame: PathLike) -> Path:
    """The digest file of a frame PNG: ``frame_0001.png`` -> ``frame_0001.sha256``."""
    return Path(frame).with_suffix(DIGEST_SUFFIX)


def temp_path(path: PathLike, token: str) -> Path:
    """The temporary name ``atomic_write`` writes ``path`` under: ``.<stem>.<token>.tmp<suffix>``
    beside it (the suffix kept, so writers that pick a format by extension still work)."""
    path = Path(path)
    return path.parent / f".{path.stem}.{token}.tmp{path.suffix}"


def lock_path(folder: PathLike) -> Path:
    """The lock file of a folder (``folder_lock``): ``.<name>.lock`` beside it."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


class _Folder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)


@dataclass(frozen=True)
class JobFolder(_Folder):
    """The paths of one job folder (``<output.folder>/<job hash[:16]>``); see the module doc."""

    path: Path

    @classmethod
    def of(cls, output_folder: PathLike, job_hash: str) -> "JobFolder":
        return cls(Path(output_folder).absolute() / folder_name(job_hash))

    @property
    def job_file(self) -> Path:
        return self.path / JOB_FILE

    @property
    def frames_dir(self) -> Path:
        return self.path / FRAMES_DIR

    def frame(self, index: int) -> Path:
        return self.frames_dir / frame_name(index)

    def frames_on_disk(self) -> list[tuple[int, Path]]:
        """(index, path) of every frame file in ``frames/``, by index (verified or not)."""
        if not self.frames_dir.is_dir():
            return []
        found = ((frame_index(p), p) for p in self.frames_dir.iterdir())
        return sorted((i, p) for i, p in found if i is not None)

    def frame_digest(self, index: int) -> Path:
        return digest_path(self.frame(index))

    @property
    def poses_dir(self) -> Path:
        return self.path / POSES_DIR

    def pose(self, index: int) -> Path:
        return self.poses_dir / pose_name(index)

    def pose_keypoints(self, index: int) -> Path:
        """The requested keypoints of frame ``index`` as OpenPose JSON (``poses/pose_0003.json``)."""
        return self.pose(index).with_suffix(".json")

    @property
    def poses_index(self) -> Path:
        return self.poses_dir / POSES_INDEX

    def animation(self, suffix: str) -> Path:
        """``animation.gif`` / ``animation.mp4`` (``suffix`` with its dot)."""
        return self.path / f"{ANIMATION_STEM}{suffix}"

    @property
    def gif(self) -> Path:
        return self.animation(".gif")

    @property
    def mp4(self) -> Path:
        return self.animation(".mp4")

    @property
    def contact_sheet(self) -> Path:
        return self.path / CONTACT_SHEET_FILE

    def side_by_side(self, suffix: str) -> Path:
        """``side_by_side.png`` / ``.gif`` / ``.mp4``: the pose | frame preview."""
        return self.path / f"{SIDE_BY_SIDE_STEM}{suffix}"

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def running(self) -> Path:
        return self.path / RUNNING_FILE

    @property
    def masks_dir(self) -> Path:
        return self.path / MASKS_DIR

    @property
    def source_mask(self) -> Path:
        return self.masks_dir / SOURCE_FILE

    def frame_mask(self, index: int) -> Path:
        return self.masks_dir / frame_name(index)

    @property
    def source_decode(self) -> Path:
        """A decode given by hand (the flows write theirs into the inversion folder)."""
        return self.path / SOURCE_DECODE_FILE

    @property
    def temp_folders(self) -> tuple[Path, ...]:
        """Where atomic writes of a run leave temporary files: the folder, frames/, poses/ and inbetweens/."""
        return (self.path, self.frames_dir, self.poses_dir, self.inbetweens_dir)

    # In-between frames: derived from two rendered frames, apart from them.
    @property
    def inbetweens_dir(self) -> Path:
        return self.path / INBETWEENS_DIR

    def inbetween(self, first: int, second: int, step: int, k: int) -> Path:
        """In-between ``step`` of ``k - 1`` from frame ``first`` to frame ``second``."""
        return self.inbetweens_dir / f"between_{first:04d}_{second:04d}_{step}of{k}.png"

    @property
    def playback(self) -> Path:
        return self.path / PLAYBACK_FILE


@dataclass(frozen=True)
class InversionFolder(_Folder):
    """The paths of one inversion folder (``<output.folder>/inversions/<inversion key[:16]>``)."""

    path: Path

    @classmethod
    def of(cls, output_folder: PathLike, inversion_key: str) -> "InversionFolder":
        return cls(Path(output_folder).absolute() / INVERSIONS_DIR / folder_name(inversion_key))

    @property
    def source(self) -> Path:
        return self.path / SOURCE_FILE

    @property
    def source_decode(self) -> Path:
        return self.path / SOURCE_DECODE_FILE

    # The engine's names: masactrl_engine imports torch, so it is imported only when asked.
    @property
    def tensors(self) -> Path:
        from masactrl_engine.inversion import TENSOR_FILE

        return self.path / TENSOR_FILE

    @property
    def meta(self) -> Path:
        from masactrl_engine.inversion import META_FILE

        return self.path / META_FILE


@dataclass(frozen=True)
class FrameStore(_Folder):
    """The content-addressed frame store (``<output.folder>/frame_store``): one PNG per frame key."""

    path: Path

    @classmethod
    def of(cls, output_folder: PathLike) -> "FrameStore":
        return cls(Path(output_folder).absolute() / FRAME_STORE_DIR)

    def frame(self, key: str) -> Path:
        return self.path / f"{folder_name(key)}.png"

    def entries(self) -> list[Path]:
        """Every PNG in the store (verified or not)."""
        return sorted(self.path.glob("*.png")) if self.path.is_dir() else []


@dataclass(frozen=True)
class VersionsFolder(_Folder):
    """``<output.folder>/<job name>``: which job folders a named job has produced, newest last."""

    path: Path

    @classmethod
    def of(cls, output_folder: PathLike, name: str) -> "VersionsFolder":
        return cls(Path(output_folder).absolute() / name)

    @property
    def latest(self) -> Path:
        return self.path / LATEST_LINK

    @property
    def versions(self) -> Path:
        return self.path / VERSIONS_FILE


def is_job_folder_name(name: str) -> bool:
    """A job, inversion or sweep folder's name: ``HASH_CHARS`` lowercase hex digits."""
    return len(name) == HASH_CHARS and all(c in "0123456789abcdef" for c in name)


@dataclass(frozen=True)
class SweepFolder(_Folder):
    """The paths of one sweep folder (``<output.folder>/sweeps/<sweep hash[:16]>``)."""

    path: Path

    @classmethod
    def of(cls, output_folder: PathLike, sweep_hash: str) -> "SweepFolder":
        return cls(Path(output_folder).absolute() / SWEEPS_DIR / folder_name(sweep_hash))

    @property
    def cells_dir(self) -> Path:
        return self.path / CELLS_DIR

    def cell_gif(self, index: int) -> Path:
        return self.cells_dir / f"cell_{index:02d}.gif"

    def cell_metrics(self, index: int) -> Path:
        return self.cells_dir / f"cell_{index:02d}.metrics.json"

    @property
    def grid(self) -> Path:
        return self.path / GRID_FILE

    @property
    def ranking(self) -> Path:
        return self.path / RANKING_FILE

    @property
    def sweep_file(self) -> Path:
        return self.path / SWEEP_FILE

    @property
    def best_job(self) -> Path:
        """The best cell as a complete job file, for `run` or `submit`."""
        return self.path / BEST_JOB_FILE


__all__ = [
    "ANIMATION_STEM", "BEST_JOB_FILE", "CELLS_DIR", "FRAME_STORE_DIR", "LATEST_LINK", "RESERVED_NAMES", "VERSIONS_FILE",
    "FrameStore", "VersionsFolder", "is_job_folder_name", "CONTACT_SHEET_FILE", "DIGEST_SUFFIX", "FRAMES_DIR", "GRID_FILE", "HASH_CHARS",
    "INBETWEENS_DIR", "PLAYBACK_FILE", "INVERSIONS_DIR", "JOB_FILE", "MASKS_DIR", "METRICS_FILE", "POSES_DIR", "POSES_INDEX", "RANKING_FILE",
    "RESULT_FILE", "RUNNING_FILE", "SIDE_BY_SIDE_STEM", "SOURCE_DECODE_FILE", "SOURCE_FILE", "SWEEPS_DIR",
    "SWEEP_FILE", "TEMP_NAME", "InversionFolder", "JobFolder", "SweepFolder", "digest_path", "folder_name",
    "frame_index", "frame_name", "lock_path", "pose_name", "temp_path",
]
