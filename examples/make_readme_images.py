"""Draws the README's pictures from the bundled examples (no model needed).

    .venv/bin/python examples/make_readme_images.py

examples/images/walk_cycle.png: the bundled walk cycle as ControlNet OpenPose maps, over the
astronaut photo that the demo animates (top) and as the maps ControlNet sees (bottom).
"""

from pathlib import Path

from PIL import Image
from skimage.data import astronaut

import pose_sources

SIDE = 160
HERE = Path(__file__).parent


def main() -> None:
    walk = pose_sources.load({"kind": "openpose_json", "path": str(HERE / "poses" / "walk")}, size=(SIDE, SIDE))
    maps = walk.render((SIDE, SIDE))
    photo = Image.fromarray(astronaut()).resize((SIDE, SIDE))
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
