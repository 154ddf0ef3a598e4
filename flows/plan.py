"""From a validated job to a plan of work: poses resolved, counts checked, content hashes.

The job folder is named by a hash of everything that determines the frames: the source image's
bytes (or the prompt and seed it is generated from), the model, the settings, each frame's
prompt and each frame's pose map (the rendered pixels, so any pose input that draws the same
skeletons gives the same frames). Output settings (fps, formats, chunking, runner) are not in
it: changing them re-stitches but renders nothing again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict

from . import frames_io
from .engines import TINY_SEED, EngineRequest
from .job import TINY, AnimationJob, JobInputError

# Bump when the meaning of a job folder changes (file names, hashing), so old folders are not reused.
PLAN_FORMAT = 1


class FramePlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    prompt: str
    pose: Optional[str] = None  # path of the pose map PNG in the job folder


class InversionRequest(BaseModel):
    """What the inversion depends on; ``key`` names it (cache key and folder name)."""

    model_config = ConfigDict(frozen=True)

    key: str
    folder: str  # where the inversion files go (not part of the key)
    image: Optional[str] = None
    fit: str = "crop"
    generate_prompt: Optional[str] = None
    seed: int = 0
    inversion_prompt: str = ""
    width: int
    height: int
    engine: EngineRequest


class ChunkRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    job_dir: str
    inversion_dir: str
    source_prompt: str
    frames: list[FramePlan]
    width: int
    height: int
    batch_size: int
    engine: EngineRequest


class JobPlan(BaseModel):
    job_hash: str
    job_dir: str
    frames: list[FramePlan]
    width: int
    height: int
    source_prompt: str
    inversion: InversionRequest
    engine: EngineRequest
    uses_poses: bool

    def chunks(self, chunk_size: int, batch_size: int, inversion_dir: str) -> list[ChunkRequest]:
        return [
            ChunkRequest(
                index=k,
                job_dir=self.job_dir,
                inversion_dir=inversion_dir,
                source_prompt=self.source_prompt,
                frames=self.frames[start : start + chunk_size],
                width=self.width,
                height=self.height,
                batch_size=batch_size,
                engine=self.engine,
            )
            for k, start in enumerate(range(0, len(self.frames), chunk_size))
        ]

    def frame_paths(self) -> list[str]:
        return [str(frames_io.frame_path(self.job_dir, f.index)) for f in self.frames]

    def pose_paths(self) -> list[str]:
        return [f.pose for f in self.frames if f.pose]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_image_pixels(image) -> str:
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def model_identity(name: Optional[str]) -> Optional[str]:
    """The tiny model is fully determined by its seed and format; other models by folder or hub id."""
    if name == TINY:
        from masactrl_engine.tiny import FORMAT_VERSION

        return f"tiny:seed{TINY_SEED}:format{FORMAT_VERSION}"
    return name


def source_identity(job: AnimationJob, image_sha256: Optional[str]) -> dict:
    if job.source.image is not None:
        return {"image_sha256": image_sha256, "fit": job.source.fit}
    s = job.settings
    # A generated source depends on how it is sampled too.
    return {"generate": {"prompt": job.source.prompt, "seed": job.source.seed, "steps": s.steps,
                         "guidance_scale": s.guidance_scale, "negative_prompt": s.negative_prompt,
                         "width": s.width, "height": s.height}}


def inversion_key(job: AnimationJob, image_sha256: Optional[str]) -> str:
    s = job.settings
    return _digest({
        "format": PLAN_FORMAT,
        "source": source_identity(job, image_sha256),
        "model": model_identity(job.model.model),
        "dtype": job.model.dtype,
        "steps": s.steps,
        "inversion_prompt": job.source.inversion_prompt,
        "width": s.width,
        "height": s.height,
    })


def job_hash(job: AnimationJob, image_sha256: Optional[str], prompts: list[str], pose_sha256: list[Optional[str]]) -> str:
    s = job.settings
    return _digest({
        "format": PLAN_FORMAT,
        "inversion": inversion_key(job, image_sha256),
        "source_prompt": job.source.prompt,
        "mask": {"subject": job.source.subject, "threshold": job.source.mask_threshold} if job.source.subject else None,
        "controlnet": model_identity(job.model.controlnet) if job.uses_poses else None,
        "settings": {"guidance_scale": s.guidance_scale, "start_step": s.start_step, "start_layer": s.start_layer,
                     "source_correction": s.source_correction, "negative_prompt": s.negative_prompt,
                     "controlnet_scale": s.controlnet_scale if job.uses_poses else None},
        "frames": [{"prompt": p, "pose": d} for p, d in zip(prompts, pose_sha256)],
    })


def resolve_pose_maps(job: AnimationJob) -> Optional[list]:
    """The job's pose maps at the output size, or None without poses; counts and sizes checked."""
    if job.frames.poses is None:
        return None
    import pose_sources

    size = (job.settings.width, job.settings.height)
    try:
        seq = pose_sources.load(job.frames.poses, size=size)
        maps = seq.render(size)
    except pose_sources.PoseSourceError as exc:
        raise JobInputError("frames.poses", str(exc)) from exc
    if not maps:
        raise JobInputError("frames.poses", "the pose source gave no frames")
    for i, m in enumerate(maps):
        if m.size != size:
            raise JobInputError("frames.poses", f"pose map {i} is {m.size[0]}x{m.size[1]}, expected {size[0]}x{size[1]}")
    return maps


def job_folder(job: AnimationJob, digest: str) -> Path:
    return Path(job.output.folder).absolute() / digest[:16]


def plan_job(job: AnimationJob, write: bool = True) -> JobPlan:
    """Resolve poses, check counts, hash; with ``write`` store job.json and the pose maps in the job folder."""
    image_sha = sha256_file(job.source.image) if job.source.image is not None else None
    maps = resolve_pose_maps(job)
    prompts = job.frames.prompts_for(None if maps is None else len(maps), job.source.prompt)
    if not prompts:
        raise JobInputError("frames.prompts", "no frames to render; give at least one prompt")
    pose_digests = [sha256_image_pixels(m) for m in maps] if maps is not None else [None] * len(prompts)
    digest = job_hash(job, image_sha, prompts, pose_digests)
    job_dir = job_folder(job, digest)

    pose_files: list[Optional[str]] = [None] * len(prompts)
    if maps is not None:
        existing = frames_io.read_poses_index(job_dir)
        paths = existing if existing is not None and len(existing) == len(maps) else None
        if paths is None and write:
            paths = frames_io.write_poses(job_dir, maps)
        pose_files = [str(p) for p in paths] if paths else [str(frames_io.pose_path(job_dir, i)) for i in range(len(maps))]
    if write:
        frames_io.write_json_atomic(job_dir / frames_io.JOB_FILE, {"job_hash": digest, "job": job.model_dump(mode="json")})

    key = inversion_key(job, image_sha)
    engine = EngineRequest.from_job(job)
    inversion = InversionRequest(
        key=key,
        folder=str(Path(job.output.folder).absolute() / "inversions" / key[:16]),
        image=str(job.source.image) if job.source.image is not None else None,
        fit=job.source.fit,
        generate_prompt=None if job.source.image is not None else job.source.prompt,
        seed=job.source.seed,
        inversion_prompt=job.source.inversion_prompt,
        width=job.settings.width,
        height=job.settings.height,
        engine=engine,
    )
    frames = [FramePlan(index=i, prompt=p, pose=pose_files[i]) for i, p in enumerate(prompts)]
    return JobPlan(
        job_hash=digest,
        job_dir=str(job_dir),
        frames=frames,
        width=job.settings.width,
        height=job.settings.height,
        source_prompt=job.source.prompt,
        inversion=inversion,
        engine=engine,
        uses_poses=maps is not None,
    )
