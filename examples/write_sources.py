"""Writes the example source photos that the job files in examples/jobs/ point at.

    python examples/write_sources.py     # -> examples/jobs/sources/{astronaut,chelsea}.png

The photos are scikit-image's bundled test images (no network): a person and a cat.
Job parameters are paths, never pixels, so the pictures must be files first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

DEFAULT = Path(__file__).resolve().parent / "jobs" / "sources"


def write_sources(folder: Path = DEFAULT) -> dict[str, Path]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("astronaut", "chelsea"):
        paths[name] = folder / f"{name}.png"
        if not paths[name].is_file():
            Image.fromarray(getattr(data, name)()).save(paths[name])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT, help=f"folder (default: {DEFAULT})")
    for name, path in write_sources(parser.parse_args().out).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
