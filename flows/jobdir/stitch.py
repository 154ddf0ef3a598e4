"""Frames to media: GIF, MP4 (H.264), a contact sheet and the pose | frame preview.

With ``interpolate`` k > 1 the GIF and MP4 play k - 1 in-between frames (``flows.jobdir.inbetween``)
between each pair of rendered frames; ``loop`` says how the animation comes back to its start:
``none`` (0 .. n-1), ``pingpong`` (0 .. n-1 .. 1, in-betweens played backwards on the way back) or
``crossfade`` (0 .. n-1, then in-betweens from n-1 to 0). ``playback.json`` records what was played.

Plain functions on PIL images and paths; the Prefect task in ``flows.tasks`` only calls
``stitch_outputs``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from PIL import GifImagePlugin, Image, ImageDraw

from flows.jobdir.frames_io import atomic_write, load_rgb, save_png_atomic, write_json_atomic
from flows.jobdir.inbetween import ensure_inbetweens
from flows.jobdir.layout import JobFolder, frame_index
from flows.jobdir.manifest import load_verified_frame

LoopMode = Literal["none", "pingpong", "crossfade"]
LOOP_MODES = ("none", "pingpong", "crossfade")
# The contact sheet frames each in-between frame in this colour (rendered frames are left as they are).
INTERPOLATED_MARK = (255, 160, 0)


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


def contact_sheet(frames: Sequence[Image.Image], columns: int | None = None,
                  interpolated: Sequence[bool] | None = None) -> Image.Image:
    """All frames on one grid, row by row; ``columns`` defaults to ceil(sqrt(n)).

    The sheet is exactly ``columns * w`` by ``rows * h`` pixels (frame size of the first frame);
    empty cells are white. Frames flagged in ``interpolated`` get a border in ``INTERPOLATED_MARK``
    drawn over their outer pixels, so in-betweens are told from rendered frames at a glance.
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
        x, y = (i % columns) * w, (i // columns) * h
        sheet.paste(frame, (x, y))
        if interpolated is not None and interpolated[i]:
            ImageDraw.Draw(sheet).rectangle((x, y, x + w - 1, y + h - 1), outline=INTERPOLATED_MARK,
                                            width=max(1, min(w, h) // 32))
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


@dataclass(frozen=True)
class Played:
    """One picture of the played sequence: rendered frame ``index``, or in-between ``step`` of
    ``k - 1`` from rendered frame ``index`` to ``to`` (positions in the list of rendered frames)."""

    index: int
    to: Optional[int] = None
    step: int = 0
    k: int = 1

    @property
    def interpolated(self) -> bool:
        return self.to is not None

    @property
    def t(self) -> Optional[float]:
        return self.step / self.k if self.interpolated else None


def _check_playback(interpolate: int, loop: str) -> None:
    if isinstance(interpolate, bool) or not isinstance(interpolate, int) or interpolate < 1:
        raise ValueError(f"interpolate: {interpolate!r} must be a whole number >= 1 (1 = no in-between frames)")
    if loop not in LOOP_MODES:
        raise ValueError(f"loop: {loop!r} is not one of {', '.join(LOOP_MODES)}")


def _bridge(a: int, b: int, k: int) -> list[Played]:
    return [Played(a, b, s, k) for s in range(1, k)]


def playback_order(count: int, interpolate: int = 1, loop: LoopMode = "none") -> list[Played]:
    """What the GIF and MP4 play, for ``count`` rendered frames: with n frames and k = interpolate,
    ``none`` plays n + (n - 1)(k - 1) pictures, ``pingpong`` 2(n - 1)k (the way back ends on frame
    1, so frame 0 is not shown twice in a row when it repeats), ``crossfade`` nk."""
    _check_playback(interpolate, loop)
    if count < 1:
        raise ValueError("frames: no frames to play")
    k = interpolate
    forward: list[Played] = []
    for i in range(count):
        if i:
            forward += _bridge(i - 1, i, k)
        forward.append(Played(i))
    if loop == "pingpong" and len(forward) > 2:
        return forward + forward[-2:0:-1]
    if loop == "crossfade":
        return forward + _bridge(count - 1, 0, k)
    return forward


def distinct(order: Sequence[Played]) -> list[Played]:
    """Each picture of ``order`` once, first appearance first (a pingpong's way back repeats them)."""
    seen: set[Played] = set()
    return [p for p in order if not (p in seen or seen.add(p))]


def _frame_numbers(frame_paths: Sequence[str | os.PathLike]) -> list[int]:
    """Frame indices of the files (``frames/frame_0004.png`` -> 4; a sweep cell stitches some frames
    only), else their positions: the in-between files are named by them."""
    found = [frame_index(p) for p in frame_paths]
    if None in found or len(set(found)) != len(found):
        return list(range(len(frame_paths)))
    return found  # type: ignore[return-value]


def played_pictures(
    frames: Sequence[Image.Image],
    frame_paths: Sequence[str | os.PathLike],
    job_dir: str | os.PathLike,
    *,
    interpolate: int = 1,
    loop: LoopMode = "none",
) -> tuple[list[Played], dict[Played, Image.Image], dict[Played, Path]]:
    """The played order, each distinct picture in it, and the in-between files (made in the job
    folder's in-between folder where missing or stale; ``frames`` are the already loaded, checked
    pictures of ``frame_paths``)."""
    order = playback_order(len(frames), interpolate, loop)
    numbers = _frame_numbers(frame_paths)
    pairs = sorted({(p.index, p.to) for p in order if p.interpolated})
    files: dict[Played, Path] = {}
    if pairs:
        data = {numbers[i]: Path(frame_paths[i]).read_bytes() for pair in pairs for i in pair}
        made = ensure_inbetweens(job_dir, [(numbers[a], numbers[b]) for a, b in pairs], interpolate, data)
        for a, b in pairs:
            for step, path in enumerate(made[(numbers[a], numbers[b])], start=1):
                files[Played(a, b, step, interpolate)] = path
    pictures: dict[Played, Image.Image] = {}
    for p in distinct(order):
        pictures[p] = load_rgb(files[p]) if p.interpolated else frames[p.index]
    return order, pictures, files


def write_playback_gif(
    frames: Sequence[Image.Image],
    frame_paths: Sequence[str | os.PathLike],
    job_dir: str | os.PathLike,
    path: str | os.PathLike,
    *,
    fps: float,
    gif_loops: int = 0,
    interpolate: int = 1,
    loop: LoopMode = "none",
) -> Path:
    """A GIF of ``frames`` with their in-betweens and loop mode at ``fps`` played frames a second
    (a sweep cell's GIF: some frames of a job folder, its in-betweens kept in that folder)."""
    order, pictures, _ = played_pictures(frames, frame_paths, job_dir, interpolate=interpolate, loop=loop)
    return write_gif([pictures[p] for p in order], path, fps, gif_loops)


def _playback_record(out: JobFolder, order: Sequence[Played], frame_paths: Sequence[str | os.PathLike],
                     files: dict[Played, Path], fps: float, interpolate: int, loop: str) -> dict:
    numbers = _frame_numbers(frame_paths)

    def where(p: Played) -> str:
        path, root = Path(files[p] if p.interpolated else frame_paths[p.index]).absolute(), out.path.absolute()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

    return {
        "fps": fps, "interpolate": interpolate, "loop": loop, "count": len(order),
        "frames": [{"file": where(p), "index": numbers[p.index], "interpolated": p.interpolated,
                    **({"to": numbers[p.to], "t": round(p.t, 6)} if p.interpolated else {})} for p in order],
    }


def _sheet_columns(count: int, interpolate: int) -> Optional[int]:
    """A multiple of ``interpolate`` near sqrt(count), so each row starts on a rendered frame."""
    if interpolate < 2:
        return None
    return interpolate * max(1, math.ceil(math.sqrt(count) / interpolate))


def stitch_outputs(
    frame_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    fps: float,
    gif: bool = True,
    mp4: bool = True,
    gif_loops: int = 0,
    pose_paths: Sequence[str | os.PathLike] | None = None,
    verify_frames: bool = False,
    interpolate: int = 1,
    loop: LoopMode = "none",
    playback_fps: Optional[float] = None,
) -> dict[str, str]:
    """Everything a finished job shows, written into ``out_dir`` under the job folder's names
    (``flows.jobdir.layout``): returns {"gif", "mp4", "contact_sheet", "side_by_side_gif", ...}: path.

    ``fps`` is rendered frames a second: the GIF and MP4 play ``fps * interpolate`` pictures a
    second (the same pace with in-betweens), or ``playback_fps``. The contact sheet shows every
    distinct picture once, in-betweens framed; the pose | frame preview shows rendered frames only,
    at ``fps``. ``playback.json`` records the played files in order.

    ``verify_frames``: load every frame through the frame manifest (``flows.jobdir.manifest``), so
    a frame that does not match its digest stops the stitch with an error naming the file, before
    anything is written. The flow always stitches this way; plain PNGs without digests need False.
    """
    _check_playback(interpolate, loop)
    rate = playback_fps if playback_fps is not None else fps * interpolate
    if not rate > 0:
        raise ValueError(f"fps: {rate} must be > 0")
    if verify_frames:
        frames = [load_verified_frame(p) for p in frame_paths]
    else:
        frames = [load_rgb(p) for p in frame_paths]
    if not frames:
        raise ValueError("frames: no frames to stitch")
    out = JobFolder(out_dir)
    order, pictures, files = played_pictures(frames, frame_paths, out_dir, interpolate=interpolate, loop=loop)
    played = [pictures[p] for p in order]
    outputs: dict[str, str] = {}
    if gif:
        outputs["gif"] = str(write_gif(played, out.gif, rate, gif_loops))
    if mp4:
        outputs["mp4"] = str(write_mp4(played, out.mp4, rate))
    sheet = distinct(order)
    outputs["contact_sheet"] = str(save_png_atomic(
        contact_sheet([pictures[p] for p in sheet], _sheet_columns(len(sheet), interpolate),
                      [p.interpolated for p in sheet]), out.contact_sheet))
    if pose_paths:
        pairs = side_by_side([load_rgb(p) for p in pose_paths], frames)
        outputs["side_by_side_png"] = str(save_png_atomic(contact_sheet(pairs), out.side_by_side(".png")))
        if gif:
            outputs["side_by_side_gif"] = str(write_gif(pairs, out.side_by_side(".gif"), fps, gif_loops))
        if mp4:
            outputs["side_by_side_mp4"] = str(write_mp4(pairs, out.side_by_side(".mp4"), fps))
    write_json_atomic(out.playback, _playback_record(out, order, frame_paths, files, rate, interpolate, loop))
    return outputs
