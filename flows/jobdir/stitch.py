"""Frames to media: GIF, MP4 (H.264), a contact sheet and the pose | frame preview.

Plain functions on PIL images and paths; the Prefect task in ``flows.tasks`` only calls
``stitch_outputs``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import GifImagePlugin, Image

from flows.jobdir.frames_io import atomic_write, load_rgb, save_png_atomic
from flows.jobdir.layout import JobFolder
from flows.jobdir.manifest import load_verified_frame


def gif_frame_duration_ms(fps: float) -> int:
    """GIF stores delays in hundredths of a second: the nearest one to 1/fps (at least 10 ms)."""
    if not fps > 0:
        raise ValueError(f"fps: {fps} must be > 0")
    return max(1, round(100.0 / fps)) * 10


def _gif_bytes(frames: Sequence[Image.Image], duration_ms: int, loop: int) -> bytes:
    # Pillow's save_all merges consecutive identical frames into one (adding up their delays),
    # so a GIF of N frames would not always have N frames. Assemble the file from Pillow's
    # per-frame helpers instead: one local palette per frame, every frame kept.
    paletted = [f.convert("RGB").quantize(colors=256) for f in frames]
    header, _ = GifImagePlugin.getheader(paletted[0], info={"loop": int(loop), "duration": duration_ms})
    parts: list[bytes] = list(header)
    for im in paletted:
        parts += GifImagePlugin.getdata(im, duration=duration_ms, disposal=1, include_color_table=True)
    parts.append(b";")
    return b"".join(parts)


def write_gif(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float, loop: int = 0) -> Path:
    """Write an animated GIF with exactly ``len(frames)`` frames; ``loop`` 0 repeats forever."""
    if not frames:
        raise ValueError("frames: no frames to write")
    if loop < 0:
        raise ValueError(f"loop: {loop} must be >= 0 (0 = forever)")
    data = _gif_bytes(frames, gif_frame_duration_ms(fps), loop)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def pad_to_even(image: Image.Image) -> Image.Image:
    """H.264 in yuv420p needs even sides: repeat the last row/column where a side is odd."""
    w, h = image.size
    if w % 2 == 0 and h % 2 == 0:
        return image
    arr = np.asarray(image.convert("RGB"))
    arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return Image.fromarray(arr)


def write_mp4(frames: Sequence[Image.Image], path: str | os.PathLike, fps: float) -> Path:
    """Write an H.264 / yuv420p MP4 at ``fps`` (odd sizes padded by one pixel to even)."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("frames: no frames to write")
    if not fps > 0:
        raise ValueError(f"fps: {fps} must be > 0")

    def write(tmp: Path) -> None:
        # macro_block_size=1: we make the sides even ourselves rather than letting imageio
        # rescale every frame to a multiple of 16.
        with imageio.get_writer(
            tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
            macro_block_size=1, output_params=["-movflags", "+faststart"], quality=8,
        ) as writer:
            for frame in frames:
                writer.append_data(np.asarray(pad_to_even(frame.convert("RGB"))))

    return atomic_write(path, write)


def contact_sheet(frames: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """All frames on one grid, row by row; ``columns`` defaults to ceil(sqrt(n)).

    The sheet is exactly ``columns * w`` by ``rows * h`` pixels (frame size of the first frame);
    empty cells are white.
    """
    if not frames:
        raise ValueError("frames: no frames for a contact sheet")
    n = len(frames)
    columns = columns or math.ceil(math.sqrt(n))
    if columns < 1:
        raise ValueError(f"columns: {columns} must be >= 1")
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    w, h = frames[0].size
    sheet = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, frame in enumerate(frames):
        frame = frame.convert("RGB")
        if frame.size != (w, h):
            frame = frame.resize((w, h), Image.Resampling.BILINEAR)
        sheet.paste(frame, ((i % columns) * w, (i // columns) * h))
    return sheet


def side_by_side(poses: Sequence[Image.Image], frames: Sequence[Image.Image]) -> list[Image.Image]:
    """Pose map on the left, rendered frame on the right (pose resized to the frame's size)."""
    if len(poses) != len(frames):
        raise ValueError(f"poses: {len(poses)} pose maps for {len(frames)} frames")
    out = []
    for pose, frame in zip(poses, frames):
        frame = frame.convert("RGB")
        w, h = frame.size
        pair = Image.new("RGB", (2 * w, h))
        pair.paste(pose.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), (0, 0))
        pair.paste(frame, (w, 0))
        out.append(pair)
    return out


def stitch_outputs(
    frame_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    fps: float,
    gif: bool = True,
    mp4: bool = True,
    loop: int = 0,
    pose_paths: Sequence[str | os.PathLike] | None = None,
    verify_frames: bool = False,
) -> dict[str, str]:
    """Everything a finished job shows, written into ``out_dir`` under the job folder's names
    (``flows.jobdir.layout``): returns {"gif", "mp4", "contact_sheet", "side_by_side_gif", ...}: path.

    ``verify_frames``: load every frame through the frame manifest (``flows.jobdir.manifest``), so
    a frame that does not match its digest stops the stitch with an error naming the file, before
    anything is written. The flow always stitches this way; plain PNGs without digests need False.
    """
    if verify_frames:
        frames = [load_verified_frame(p) for p in frame_paths]
    else:
        frames = [load_rgb(p) for p in frame_paths]
    out = JobFolder(out_dir)
    outputs: dict[str, str] = {}
    if gif:
        outputs["gif"] = str(write_gif(frames, out.gif, fps, loop))
    if mp4:
        outputs["mp4"] = str(write_mp4(frames, out.mp4, fps))
    outputs["contact_sheet"] = str(save_png_atomic(contact_sheet(frames), out.contact_sheet))
    if pose_paths:
        pairs = side_by_side([load_rgb(p) for p in pose_paths], frames)
        outputs["side_by_side_png"] = str(save_png_atomic(contact_sheet(pairs), out.side_by_side(".png")))
        if gif:
            outputs["side_by_side_gif"] = str(write_gif(pairs, out.side_by_side(".gif"), fps, loop))
        if mp4:
            outputs["side_by_side_mp4"] = str(write_mp4(pairs, out.side_by_side(".mp4"), fps))
    return outputs
