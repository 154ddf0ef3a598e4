"""From a validated job to a plan of work: poses resolved, counts checked, requests, content hashes.

The requests below are what the workers read, and nothing else: an inversion request is all an
inversion depends on, an engine request all a frame depends on besides its own prompt and pose.
So the content hashes are simply digests of the requests (``pixel_dump``: every field except the
few marked ``NotHashed``, such as a path whose file is hashed by content). A new setting is
hashed the moment it is added to a request; nothing lists fields by hand.

Every frame has its own content key (:func:`frame_keys`): the inversion, the shared engine
settings, the source prompt and the frame's own prompt, pose, seed and overrides (and, only when
frames attend to an anchor frame, the anchor's key). Rendered frames live once in the output
folder's frame store under that key, so an edit renders exactly the frames it changes. The job
hash is the digest of the job's frame keys in order; it names the job folder, which presents the
frames and holds the outputs. Output settings (fps, formats) and execution settings (runner,
chunking, batching) are in no request, so changing them re-stitches but renders nothing again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Optional

from PIL import Image
from pydantic import BaseModel, ConfigDict

import pose_sources
from pose_sources.load import centre_crop

from flows.job.checkpoints import model_configs, model_identity, resolve_model
from flows.job.checks import ImageProblem, open_image
from flows.job.hashing import NotHashed, pixel_dump
from flows.job.model import AnimationJob, JobInputError, ModelSpec, RenderSettings
from flows.jobdir import frames_io, stale_files
from flows.jobdir.layout import FrameStore, InversionFolder, JobFolder

# Bump when the meaning of a job folder changes (file names, hashing), so old folders are not reused.
PLAN_FORMAT = 3

# Settings a frame depends on only when it attends to an anchor frame (settings.cross_frame 'anchor').
ANCHOR_SETTINGS = ("anchor_frame", "anchor_weight")

# RenderSettings -> masactrl_engine.ControlConfig: same names, except these. ``width``/``height``
# are not engine settings but the canvas that ``invert``/``render`` are called with.
ENGINE_NAMES = {"steps": "num_steps"}
CANVAS_FIELDS = ("width", "height")


def fit_source(image: Image.Image, width: int, height: int, fit: str = "crop") -> Image.Image:
    """'crop': the centre of ``image`` with the aspect ratio of width x height (the engine then
    resizes it without distortion); 'stretch': the image unchanged (the engine stretches it)."""
    if fit == "stretch":
        return image
    if fit != "crop":
        raise ValueError(f"source.fit: {fit!r} is not 'crop' or 'stretch'")
    # The same crop pose_sources uses to find the subject for `retarget: source`.
    return centre_crop(image, (width, height))


def decoded_source(path: str | Path) -> Image.Image:
    """The source picture as 8-bit RGB. Validation read only its header, so compressed data that
    does not decode is found here: an input error naming the field, not a retried traceback."""
    try:
        return open_image(path)
    except ImageProblem as exc:
        raise JobInputError("source.image", str(exc)) from None


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def content(self) -> dict[str, Any]:
        """What this request's result depends on (for hashing)."""
        return pixel_dump(self)


class EngineRequest(_Request):
    """Everything a worker needs to build (or find) its engine: names and numbers only."""

    model: ModelSpec
    settings: RenderSettings
    subject: Optional[str] = None
    mask_threshold: float = 0.1

    @classmethod
    def from_job(cls, job: AnimationJob) -> "EngineRequest":
        # The ControlNet matters only when there are poses: without them it is never called.
        model = job.model if job.uses_poses else job.model.model_copy(update={"controlnet": None})
        return cls(model=model, settings=job.settings, subject=job.source.subject,
                   mask_threshold=job.source.mask_threshold)

    def content(self) -> dict[str, Any]:
        return {**pixel_dump(self), "model_identity": model_identity(self.model)}

    def control_config(self):
        """The engine's ControlConfig, derived field by field from the render settings."""
        return control_config(self.settings, self.subject, self.mask_threshold)


def control_config(settings: RenderSettings, subject: Optional[str] = None, mask_threshold: float = 0.1):
    from masactrl_engine import ControlConfig, MaskConfig

    values = settings.model_dump(exclude=set(CANVAS_FIELDS))
    mask = MaskConfig(subject=subject, threshold=mask_threshold) if subject else None
    return ControlConfig(**{ENGINE_NAMES.get(k, k): v for k, v in values.items()}, mask=mask)


class InversionRequest(_Request):
    """What the inversion depends on; its digest names it (``key``: cache key and folder name)."""

    folder: Annotated[str, NotHashed("where the files go, not what they hold")]
    image: Annotated[Optional[str], NotHashed("hashed by content: image_sha256")] = None
    image_sha256: Optional[str] = None
    fit: str = "crop"
    generate_prompt: Optional[str] = None
    seed: int = 0
    inversion_prompt: str = ""
    model: ModelSpec
    # The sampler settings the inversion (or, for a generated source, the generation) reads.
    settings: RenderSettings

    @property
    def key(self) -> str:
        return inversion_key(self)

    def content(self) -> dict[str, Any]:
        return {**pixel_dump(self), "model_identity": model_identity(self.model)}


def inversion_key(request: InversionRequest) -> str:
    return _digest({"format": PLAN_FORMAT, "inversion": request.content()})


def inversion_settings(job: AnimationJob) -> RenderSettings:
    """The settings an inversion depends on, the others at their defaults (so that jobs, and the
    cells of a sweep, that differ only in MasaCtrl settings share one inversion). A generated
    source also depends on how it is sampled."""
    s = job.settings
    keep = {"width": s.width, "height": s.height, "steps": s.steps, "start_step": 0}
    if job.source.image is None:
        keep.update(guidance_scale=s.guidance_scale, negative_prompt=s.negative_prompt)
    return RenderSettings(**keep)


class FramePlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: Annotated[int, NotHashed("a frame's place, not its content")]
    prompt: str
    # A frame between two prompt keyframes: its conditioning lies `travel` (0 < travel < 1) of the
    # way from `prompt`'s to `prompt_to`'s, by `interpolation` ('linear' or 'slerp').
    prompt_to: Optional[str] = None
    travel: Optional[float] = None
    interpolation: Optional[str] = None
    pose: Annotated[Optional[str], NotHashed("hashed by content: pose_sha256")] = None
    pose_sha256: Optional[str] = None
    seed: Optional[int] = None
    controlnet_scale: Optional[float] = None
    key: Annotated[Optional[str], NotHashed("the digest of the rest (frame_keys)")] = None


class ChunkRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    job_dir: str
    store_dir: str
    inversion_dir: str
    source_prompt: str
    frames: list[FramePlan]
    batch_size: int
    engine: EngineRequest
    anchor: Optional[FramePlan] = None  # with cross_frame 'anchor': every chunk renders against it

    @property
    def size(self) -> tuple[int, int]:
        return self.engine.settings.width, self.engine.settings.height


class JobPlan(BaseModel):
    job_hash: str
    job_dir: str
    store_dir: str
    frames: list[FramePlan]
    source_prompt: str
    inversion: InversionRequest
    engine: EngineRequest
    uses_poses: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.engine.settings.width, self.engine.settings.height

    def chunks(self, chunk_size: int, batch_size: int, inversion_dir: str,
               indices: Optional[list[int]] = None, first_index: int = 0) -> list[ChunkRequest]:
        """The requests that render the job's frames, ``chunk_size`` frames each, numbered from
        ``first_index``. With ``indices`` only those frames (a sweep's sample): they keep their own
        indices, and every chunk the job's folder, engine and anchor, so the files are a full run's."""
        if indices is None:
            frames = self.frames
        else:
            wanted = set(indices)
            frames = [f for f in self.frames if f.index in wanted]
        return [
            ChunkRequest(
                index=first_index + k,
                job_dir=self.job_dir,
                store_dir=self.store_dir,
                inversion_dir=inversion_dir,
                source_prompt=self.source_prompt,
                frames=frames[start : start + chunk_size],
                batch_size=batch_size,
                engine=self.engine,
                anchor=self.anchor,
            )
            for k, start in enumerate(range(0, len(frames), chunk_size))
        ]

    @property
    def anchor(self) -> Optional[FramePlan]:
        s = self.engine.settings
        return self.frames[s.anchor_frame] if s.cross_frame == "anchor" else None

    def only(self, indices: list[int]) -> "JobPlan":
        """The plan with only the frames ``indices`` (what a subset run stitches)."""
        wanted = set(indices)
        return self.model_copy(update={"frames": [f for f in self.frames if f.index in wanted]})

    def frame_paths(self) -> list[str]:
        return [str(frames_io.frame_path(self.job_dir, f.index)) for f in self.frames]

    def pose_paths(self) -> list[str]:
        return [f.pose for f in self.frames if f.pose]


def frame_keys(inversion: InversionRequest, engine: EngineRequest, source_prompt: str,
               frames: list[FramePlan]) -> list[str]:
    """Each frame's content key: a digest of exactly what its pixels depend on.

    What every frame shares (the inversion, the engine settings, the source prompt) and the frame's
    own fields (prompt, pose pixels, seed, ControlNet scale: whatever ``FramePlan`` holds that is not
    ``NotHashed``); not its index, nor the other frames, except with ``cross_frame: anchor``, where
    every frame attends to the anchor frame and so depends on the anchor's key. Frames render the
    same alone or in any batch (within float noise), which is what makes the key per frame.
    """
    content = engine.content()
    anchored = engine.settings.cross_frame == "anchor"
    if not anchored:
        content["settings"] = {k: v for k, v in content["settings"].items() if k not in ANCHOR_SETTINGS}
    shared = {"format": PLAN_FORMAT, "inversion": inversion.key, "engine": content, "source_prompt": source_prompt}
    own = [_digest({**shared, "frame": pixel_dump(f)}) for f in frames]
    if not anchored:
        return own
    anchor = own[engine.settings.anchor_frame]
    return [_digest({"frame": key, "anchor": anchor}) for key in own]


def job_hash(keys: list[str]) -> str:
    """The job's hash: its frame keys in order (so it changes with any frame, but not with output
    or execution settings)."""
    return _digest({"format": PLAN_FORMAT, "frames": keys})


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


def resolve_pose_maps(job: AnimationJob) -> Optional[tuple[list, list]]:
    """The job's pose maps at the output size and the poses they draw, or None without poses;
    counts and sizes checked."""
    if job.frames.poses is None:
        return None
    size = (job.settings.width, job.settings.height)
    source = None
    # Without a source image (synthesis), pose_sources itself says that `retarget: source` needs one.
    if getattr(job.frames.poses, "retarget", "none") == "source" and job.source.image is not None:
        # the same crop the inversion sees, at full resolution
        source = fit_source(decoded_source(job.source.image), size[0], size[1], job.source.fit)
    try:
        seq = pose_sources.load(job.frames.poses, size=size, source_image=source)
        maps = seq.render(size)
    except pose_sources.PoseSourceError as exc:
        raise JobInputError("frames.poses", str(exc)) from exc
    if not maps:
        raise JobInputError("frames.poses", "the pose source gave no frames")
    for i, m in enumerate(maps):
        if m.size != size:
            raise JobInputError("frames.poses", f"pose map {i} is {m.size[0]}x{m.size[1]}, expected {size[0]}x{size[1]}")
    return maps, list(seq.poses)


def frames_with_overrides(job: AnimationJob, frames: list[FramePlan]) -> list[FramePlan]:
    """The frames with the job's per-frame overrides (``frames.overrides``) applied."""
    frames = list(frames)
    for k, override in enumerate(job.frames.overrides):
        if override.index >= len(frames):
            raise JobInputError(f"frames.overrides[{k}].index",
                                f"frame {override.index} does not exist; the job has {len(frames)} frames (0-{len(frames) - 1})")
        changes = {name: value for name, value in override.model_dump(exclude={"index"}).items() if value is not None}
        frames[override.index] = frames[override.index].model_copy(update=changes)
    return frames


def check_settings_against_frames(job: AnimationJob, count: int) -> None:
    s = job.settings
    seeded = [k for k, o in enumerate(job.frames.overrides) if o.seed is not None]
    if seeded and s.frame_start != "noise":
        raise JobInputError(f"frames.overrides[{seeded[0]}].seed",
                            "a frame's own seed only applies with settings.frame_start: noise; set it, or remove the seed")
    if s.cross_frame == "anchor" and s.anchor_frame >= count:
        raise JobInputError("settings.anchor_frame",
                            f"frame {s.anchor_frame} does not exist; the job has {count} frames (0-{count - 1})")


def check_model(job: AnimationJob) -> None:
    """What can be checked against the model's configs without loading weights: the start layer
    against its transformer blocks, the LoRAs against its family."""
    from masactrl_engine import EngineInputError
    from masactrl_engine.families import check_start_layer
    from masactrl_engine.loading import check_loras

    try:
        configs = model_configs(job.model)
    except EngineInputError as exc:
        raise JobInputError("model.model", str(exc).removeprefix("model: ")) from None
    if configs is None:
        return  # a hub id that is not cached here: the worker checks when it loads it
    try:
        check_start_layer(job.settings.start_layer, configs[0], field="settings.start_layer")
    except EngineInputError as exc:
        raise JobInputError("settings.start_layer", str(exc).removeprefix("settings.start_layer: ")) from None
    if job.model.loras:
        try:
            check_loras(resolve_model(job.model.model), [(lora.path, lora.scale) for lora in job.model.loras])
        except EngineInputError as exc:
            field, _, message = str(exc).partition(": ")
            raise JobInputError(f"model.{field}", message) from None


def inversion_request(job: AnimationJob, image_sha256: Optional[str]) -> InversionRequest:
    image = job.source.image
    unfolded = InversionRequest(
        folder="",
        image=str(image) if image is not None else None,
        image_sha256=image_sha256,
        fit=job.source.fit,
        generate_prompt=None if image is not None else job.source.prompt,
        seed=job.source.seed,
        inversion_prompt=job.source.inversion_prompt,
        model=job.model.model_copy(update={"controlnet": None}),
        settings=inversion_settings(job),
    )
    folder = InversionFolder.of(job.output.folder, unfolded.key)
    return unfolded.model_copy(update={"folder": str(folder.path)})


def plan_job(job: AnimationJob, write: bool = True) -> JobPlan:
    """Resolve poses, check counts, hash; with ``write`` store job.json and the pose maps in the job folder."""
    check_model(job)
    image_sha = sha256_file(job.source.image) if job.source.image is not None else None
    resolved = resolve_pose_maps(job)
    maps, poses = resolved if resolved is not None else (None, None)
    prompts = job.frames.prompt_travel(None if maps is None else len(maps), job.source.prompt)
    if not prompts:
        raise JobInputError("frames.prompts", "no frames to render; give at least one prompt")
    pose_digests = [sha256_image_pixels(m) for m in maps] if maps is not None else [None] * len(prompts)
    own_prompt = {o.index for o in job.frames.overrides if o.prompt is not None}  # replaces the whole travel
    frames = [FramePlan(index=i, prompt=p, pose_sha256=d, **({} if to is None or i in own_prompt else {
                  "prompt_to": to, "travel": t, "interpolation": job.frames.prompt_interpolation}))
              for i, ((p, to, t), d) in enumerate(zip(prompts, pose_digests))]
    frames = frames_with_overrides(job, frames)
    check_settings_against_frames(job, len(frames))
    inversion = inversion_request(job, image_sha)
    engine = EngineRequest.from_job(job)
    keys = frame_keys(inversion, engine, job.source.prompt, frames)
    frames = [f.model_copy(update={"key": k}) for f, k in zip(frames, keys)]
    digest = job_hash(keys)
    folder = JobFolder.of(job.output.folder, digest)
    job_dir = folder.path

    if maps is not None:
        existing = frames_io.read_poses_index(job_dir)
        paths = existing if existing is not None and len(existing) == len(maps) else None
        if paths is None and write:
            paths = frames_io.write_poses(job_dir, maps, [pose.to_json() for pose in poses])
        paths = paths or [frames_io.pose_path(job_dir, i) for i in range(len(maps))]
        frames = [f.model_copy(update={"pose": str(p)}) for f, p in zip(frames, paths)]
    if write:
        stale_files.remove_stale_temp_files(job_dir)  # left by a killed earlier run
        stale_files.remove_stale_store_temp_files(FrameStore.of(job.output.folder).path)
        frames_io.write_json_atomic(folder.job_file, {"job_hash": digest, "inversion_key": inversion.key,
                                                      "frame_keys": keys, "job": job.model_dump(mode="json")})
    return JobPlan(
        job_hash=digest,
        job_dir=str(job_dir),
        store_dir=str(FrameStore.of(job.output.folder).path),
        frames=frames,
        source_prompt=job.source.prompt,
        inversion=inversion,
        engine=engine,
        uses_poses=maps is not None,
    )
