"""Draws the README's pictures from the bundled examples (no model needed).

    .venv/bin/python examples/make_readme_images.py

examples/images/walk_cycle.png: the bundled walk cycle moved onto the astronaut photo that the
demo animates (`retarget: source`: her pose is found by the bundled detector, the walk's first
frame lands on it), drawn over the photo (top) and as the maps ControlNet sees (bottom). Legs
fall below the picture's edge (a half-length portrait), so they are not drawn.
"""

from pathlib import Path

from PIL import Image
from skimage.data import astronaut

import pose_sources

SIDE = 160
HERE = Path(__file__).parent


def main() -> None:
    source = Image.fromarray(astronaut())  # square: already fitted to the square frames
    spec = {"kind": "openpose_json", "path": str(HERE / "poses" / "walk"), "retarget": "source"}
    walk = pose_sources.load(spec, size=(SIDE, SIDE), source_image=source)
    maps = walk.render((SIDE, SIDE))
    photo = source.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    sheet = Image.new("RGB", (SIDE * len(maps), SIDE * 2), "white")
    for i, pose_map in enumerate(maps):
        sheet.paste(pose_sources.overlay(photo, pose_map, alpha=0.8), (i * SIDE, 0))
        sheet.paste(pose_map, (i * SIDE, SIDE))
    out = HERE / "images" / "walk_cycle.png"
    out.parent.mkdir(exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
