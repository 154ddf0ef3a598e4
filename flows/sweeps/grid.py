"""Sweeps over render settings, without Prefect: expand the axes into cells, lay out a grid, rank.

The axes come from ``flows/job/sweep_axes.py`` (the ``sweep:`` section of a job file and
``--grid`` strings, typed by the job model's own fields); each cell becomes a job through
``apply_cell``, which runs the job model's full validation (cross-field rules included).

Cells are the product of the axes, the first axis varying slowest.

Grid layout (``grid_image``): one axis gives a single row with one column per value. With two
or more, the first axis runs down the rows and the others are flattened into the columns (the
column label lists every one of them, one line each); no pages, so the whole sweep is one
picture. Each cell shows all of its rendered frames side by side, at full size, in frame order,
centred in its column (a column is as wide as its cells or its label, whichever is wider).

Ranking (``rank_cells``): each criterion that every measured cell has (warp error and
appearance distance: lower is better; PCK@0.05: higher is better) is min-max normalised over
the cells to 0 (the best cell) .. 1 (the worst); the score is the mean of those, so 0 means
best on everything. Ties go to the lower warp error, then to the earlier cell. Source PSNR is
left out: it does not depend on the render settings. Cells without metrics (failed) come last.
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ValidationError

from flows.job.files import parse_override, set_dotted
from flows.job.model import AnimationJob, describe_validation_error
from flows.job.sweep_axes import MAX_CELLS, SweepAxis, SweepError, SweepSpec, parse_axes, parse_grid, select_frames


def parse_sweep(mapping: Optional[Mapping] = None, grid: Iterable[str] = ()) -> SweepSpec:
    """A job file's ``sweep:`` mapping plus ``--grid`` strings -> axes typed by ``AnimationJob``."""
    return parse_axes(mapping, grid, AnimationJob)


# --------------------------------------------------------------------------- cells


class SweepCell(BaseModel):
    index: int
    row: int
    column: int
    values: dict[str, Any]  # key -> value, in axis order

    @property
    def overrides(self) -> list[str]:
        """``key=value`` texts that ``jobfiles.parse_override`` reads back as these values."""
        return [f"{key}={_value_text(key, value)}" for key, value in self.values.items()]

    @property
    def set_line(self) -> str:
        """The cell as ``--set`` options for ``masactrl-animate run``, quoted for a POSIX shell."""
        return " ".join(f"--set {shlex.quote(o)}" for o in self.overrides)

    def label(self, keys: Optional[Mapping[str, str]] = None) -> str:
        keys = keys or {}
        return ", ".join(f"{keys.get(k, k)}={_show(v)}" for k, v in self.values.items())


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _value_text(key: str, value: Any) -> str:
    if isinstance(value, str):
        if parse_override(f"{key}={value}")[1] == value:
            return value
        return json.dumps(value)  # a YAML double-quoted scalar
    return json.dumps(value)


def expand_cells(spec: SweepSpec) -> list[SweepCell]:
    """All cells of the sweep: the product of the axes, first axis slowest (see the module doc)."""
    cells = []
    rest = spec.axes[1:]
    columns_per_row = 1
    for axis in rest:
        columns_per_row *= len(axis.values)
    for index, combo in enumerate(itertools.product(*(a.values for a in spec.axes))):
        if len(spec.axes) == 1:
            row, column = 0, index
        else:
            row, column = divmod(index, columns_per_row)
        cells.append(SweepCell(index=index, row=row, column=column,
                               values={a.key: v for a, v in zip(spec.axes, combo)}))
    return cells


def apply_cell(job, cell: SweepCell):
    """The job with the cell's settings, fully validated (raises SweepError naming the cell)."""
    data = job.model_dump(mode="json")
    for key, value in cell.values.items():
        set_dotted(data, key.split("."), value)
    try:
        return AnimationJob.model_validate(data)
    except ValidationError as exc:
        raise SweepError(f"sweep cell {cell.label()}: {'; '.join(describe_validation_error(exc))}") from None


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Last part of each dotted key, or the whole key where two axes would share a name."""
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


# --------------------------------------------------------------------------- grid image

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


@dataclass
class SweepGrid:
    image: Image.Image
    cell_boxes: dict[int, Box] = field(default_factory=dict)  # cell index -> where its frames are
    row_label_boxes: list[Box] = field(default_factory=list)
    column_label_boxes: list[Box] = field(default_factory=list)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def cell_strip(frames: Sequence[Image.Image]) -> Image.Image:
    """A cell's frames side by side, in order, at full size."""
    frames = [f.convert("RGB") for f in frames]
    if not frames:
        raise SweepError("sweep grid: a cell with no frames")
    w, h = frames[0].size
    for f in frames[1:]:
        if f.size != (w, h):
            raise SweepError(f"sweep grid: frames of one cell differ in size ({f.size} vs {(w, h)})")
    strip = Image.new("RGB", (w * len(frames), h))
    for k, f in enumerate(frames):
        strip.paste(f, (k * w, 0))
    return strip


def grid_image(
    cells: Sequence[SweepCell],
    frames: Mapping[int, Optional[Sequence[Image.Image]]],
    *,
    gap: int = 6,
    font_size: int = 14,
    background: tuple[int, int, int] = (255, 255, 255),
    text_color: tuple[int, int, int] = (0, 0, 0),
) -> SweepGrid:
    """The labelled grid: rows x columns of cell strips, setting values on the axes.

    ``frames`` maps a cell index to that cell's frames; a cell without frames (failed, not
    rendered) is drawn as a grey box marked "missing".
    """
    if not cells:
        raise SweepError("sweep grid: no cells")
    strips = {c.index: cell_strip(frames[c.index]) for c in cells if frames.get(c.index)}
    if not strips:
        raise SweepError("sweep grid: no cell has frames")
    cw, ch = next(iter(strips.values())).size
    for index, s in strips.items():
        if s.size != (cw, ch):
            raise SweepError(f"sweep grid: cell {index} is {s.size}, others {(cw, ch)}; render the same frames per cell")
    keys = list(cells[0].values)
    names = short_keys(keys)
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        l, t, r, b = probe.multiline_textbbox((0, 0), text, font=font, spacing=2)
        return r - l, b - t

    n_rows = max(c.row for c in cells) + 1
    n_cols = max(c.column for c in cells) + 1
    row_keys = keys[:1] if len(keys) > 1 else []
    col_keys = keys[1:] if len(keys) > 1 else keys
    row_text = {c.row: "\n".join(f"{names[k]}={_show(c.values[k])}" for k in row_keys) for c in cells}
    col_text = {c.column: "\n".join(f"{names[k]}={_show(c.values[k])}" for k in col_keys) for c in cells}
    left = (max(text_size(t)[0] for t in row_text.values()) + 2 * gap) if row_keys else gap
    top = max(text_size(t)[1] for t in col_text.values()) + 2 * gap
    # A column is as wide as its cells or its label, whichever is wider; cells are centred in it.
    slot = max(cw, max(text_size(t)[0] for t in col_text.values()) + gap)
    width = left + n_cols * (slot + gap)
    height = top + n_rows * (ch + gap)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    grid = SweepGrid(image)
    for col in range(n_cols):
        x = left + col * (slot + gap)
        tw, th = text_size(col_text[col])
        box = (x, gap, x + slot, top - gap)
        draw.multiline_text((x + max(0, (slot - tw) // 2), gap), col_text[col], font=font, fill=text_color, spacing=2)
        grid.column_label_boxes.append(box)
    for row in range(n_rows):
        y = top + row * (ch + gap)
        box = (gap, y, left - gap, y + ch)
        if row_keys:
            tw, th = text_size(row_text[row])
            draw.multiline_text((gap, y + max(0, (ch - th) // 2)), row_text[row], font=font, fill=text_color, spacing=2)
            grid.row_label_boxes.append(box)
    for c in cells:
        x, y = left + c.column * (slot + gap) + (slot - cw) // 2, top + c.row * (ch + gap)
        box = (x, y, x + cw, y + ch)
        if c.index in strips:
            image.paste(strips[c.index], (x, y))
        else:
            draw.rectangle((x, y, x + cw - 1, y + ch - 1), fill=(128, 128, 128))
            draw.text((x + gap, y + gap), "missing", font=font, fill=(255, 255, 255))
        grid.cell_boxes[c.index] = box
    return grid


# --------------------------------------------------------------------------- ranking

CRITERIA: tuple[tuple[str, bool], ...] = (  # summary field, higher is better
    ("warp_error", False),
    ("appearance_emd", False),
    ("pose_pck", True),
)


class RankedCell(BaseModel):
    rank: int
    cell: SweepCell
    score: Optional[float]  # 0 = best on every criterion used .. 1 = worst; None: no metrics
    criteria: dict[str, Optional[float]]  # the raw numbers of CRITERIA
    used: list[str]  # the criteria that entered the score


def _summary_of(metrics: Any) -> Any:
    return getattr(metrics, "summary", metrics)


def rank_cells(cells: Sequence[SweepCell], metrics: Mapping[int, Any]) -> list[RankedCell]:
    """Cells best first (see the module docstring for the score). ``metrics`` maps a cell index
    to its ``quality.JobMetrics`` or ``MetricsSummary`` (or None when the cell failed)."""
    numbers = {}
    for c in cells:
        summary = _summary_of(metrics.get(c.index))
        numbers[c.index] = None if summary is None else {name: getattr(summary, name, None) for name, _ in CRITERIA}
    measured = [n for n in numbers.values() if n is not None]
    used = [name for name, _ in CRITERIA if measured and all(n[name] is not None for n in measured)]
    scores: dict[int, Optional[float]] = {}
    for c in cells:
        n = numbers[c.index]
        if n is None or not used:
            scores[c.index] = None if n is None else 0.0
            continue
        parts = []
        for name, higher in CRITERIA:
            if name not in used:
                continue
            values = [m[name] for m in measured]
            best, worst = (max(values), min(values)) if higher else (min(values), max(values))
            parts.append(0.0 if best == worst else (n[name] - best) / (worst - best))
        scores[c.index] = sum(parts) / len(parts)

    def order(c: SweepCell):
        s = scores[c.index]
        warp = (numbers[c.index] or {}).get("warp_error")
        return (s is None, s if s is not None else 0.0, warp if warp is not None else float("inf"), c.index)

    ranked = sorted(cells, key=order)
    return [RankedCell(rank=k + 1, cell=c, score=scores[c.index], criteria=numbers[c.index] or {},
                       used=used if numbers[c.index] is not None else [])
            for k, c in enumerate(ranked)]


def ranking_table(ranked: Sequence[RankedCell]) -> list[dict[str, Any]]:
    """Rows for a table (Prefect table artifact, terminal): rank, swept values, score, metrics, --set line."""
    rows = []
    for r in ranked:
        row: dict[str, Any] = {"rank": r.rank}
        row.update({k: _show(v) for k, v in r.cell.values.items()})
        row["score"] = None if r.score is None else round(r.score, 4)
        for name, _ in CRITERIA:
            value = r.criteria.get(name)
            row[name] = None if value is None else round(value, 4)
        row["set"] = r.cell.set_line
        rows.append(row)
    return rows


def best_set_line(ranked: Sequence[RankedCell]) -> str:
    """``masactrl-animate run JOB --set ...`` options of the best measured cell."""
    if not ranked or ranked[0].score is None:
        raise SweepError("sweep: no cell has metrics, so there is no best cell; render the sweep first")
    return ranked[0].cell.set_line


__all__ = [
    "CRITERIA", "MAX_CELLS", "RankedCell", "SweepAxis", "SweepCell", "SweepError", "SweepGrid", "SweepSpec",
    "apply_cell", "best_set_line", "cell_strip", "expand_cells", "grid_image", "parse_grid",
    "parse_sweep", "rank_cells", "ranking_table", "select_frames", "short_keys",
]
