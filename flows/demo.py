"""``masactrl-animate demo``: the flow on the bundled examples with the tiny checkpoint.

Two jobs: a person photo (``skimage.data.astronaut()``) driven by the walk-cycle poses in
``examples/poses/walk``, played as an endless loop with an in-between frame after every rendered
one (``examples/jobs/astronaut_walk_loop.yaml``: optical flow, no model, so it costs the demo
about nothing), and a cat photo (``skimage.data.chelsea()``) following a prompt
sequence with mask guidance on "cat". The photos are written to disk first: job parameters
are paths, never pixels.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from flows.animation import animate
from flows.job.model import AnimationJob

DEMO_OUT = Path("out/demo")
WALK_LOOP = {"interpolate": 2, "loop": "crossfade"}
CAT_PROMPTS = [
    "a photo of a cat sitting",
    "a photo of a cat standing",
    "a photo of a cat walking",
    "a photo of a cat jumping",
    "a photo of a cat running",
    "a photo of a cat sleeping",
]


def examples_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "examples"


def write_demo_sources(folder: Path) -> dict[str, Path]:
    """Save the two bundled scikit-image photos as PNG files (idempotent)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"astronaut": folder / "astronaut.png", "chelsea": folder / "chelsea.png"}
    for name, path in paths.items():
        if not path.is_file():
            Image.fromarray(getattr(data, name)()).save(path)
    return paths


def demo_jobs(out: Path = DEMO_OUT, size: int = 128, steps: int = 10) -> dict[str, AnimationJob]:
    out = Path(out).absolute()
    walk = examples_dir() / "poses" / "walk"
    if not walk.is_dir():
        raise FileNotFoundError(f"{walk}: the walk-cycle poses are missing; run the demo from a checkout of the project")
    sources = write_demo_sources(out / "inputs")
    settings = {"width": size, "height": size, "steps": steps, "start_step": min(2, steps - 1)}
    output = {"folder": str(out), "fps": 8}
    execution = {"chunk_size": 4, "batch_size": 4}
    return {
        "astronaut-walk": AnimationJob(
            name="astronaut-walk",
            source={"image": str(sources["astronaut"]), "prompt": "a photo of an astronaut"},
            frames={"prompts": ["a photo of an astronaut walking"],
                    # moved onto the astronaut detected in the source (the flow passes the fitted source)
                    "poses": {"kind": "openpose_json", "path": str(walk), "retarget": "source"}},
            model={"model": "tiny", "controlnet": "tiny"},
            # README "Which settings for which job": poses far from the source's win from shared noise.
            settings={**settings, "frame_start": "noise"},
            # One in-between after each frame, and in-betweens from the last pose back to the first.
            output={**output, **WALK_LOOP},
            execution=execution,
        ),
        "cat-prompts": AnimationJob(
            name="cat-prompts",
            source={"image": str(sources["chelsea"]), "prompt": "a photo of a cat", "subject": "cat"},
            frames={"prompts": CAT_PROMPTS},
            model={"model": "tiny"},
            settings=settings,
            output=output,
            execution=execution,
        ),
    }


def run_demo(out: Path = DEMO_OUT, size: int = 128, steps: int = 10) -> dict:
    return {name: animate(job) for name, job in demo_jobs(out, size, steps).items()}
