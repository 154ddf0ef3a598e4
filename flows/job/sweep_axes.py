"""The axes of a sweep, parsed and typed by the job model's own field types (no Prefect).

A sweep is a grid of settings: ``--grid settings.start_step=2,4,8`` on the command line, or in
a job file::

    sweep:
      settings.start_step: [2, 4, 8]
      settings.start_layer: [8, 10]
      frames: [0, 5, 11]          # optional: frame indices rendered per cell

(nested mappings such as ``sweep: {settings: {start_step: [2, 4]}}`` mean the same). A
``--grid`` for a key the job file also sweeps replaces that axis. The job model is passed in,
never imported, so the job model can validate its own ``sweep:`` section with these functions.
Cells, the grid picture and the ranking are in ``flows/sweeps/grid.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from flows.job.hashing import not_hashed_reason
from flows.job.yaml_text import YamlRefused, load_yaml

MAX_CELLS = 256
# Settings in sections that do not change the frames (NotHashed) but change what a cell shows:
# each cell stitches its own GIF with them, from frames the cells share.
SWEEPABLE_OUTPUT_SETTINGS = frozenset({"output.interpolate", "output.loop"})
DEFAULT_SWEEP_FRAMES = 4


class SweepError(ValueError):
    """A sweep that cannot be used as given; the message names the key and the fix."""


# --------------------------------------------------------------------------- parsing


class SweepAxis(BaseModel):
    key: str
    values: list[Any]


class SweepSpec(BaseModel):
    axes: list[SweepAxis]
    frames: Optional[list[int]] = None

    @property
    def cell_count(self) -> int:
        n = 1
        for axis in self.axes:
            n *= len(axis.values)
        return n


def _scalar(raw: str, key: str) -> Any:
    text = raw.strip()
    if not text:
        raise SweepError(f"--grid {key}: empty value in the list; give values like {key}=2,4,8")
    try:
        value = load_yaml(text, check_duplicates=False)
    except (yaml.YAMLError, YamlRefused):  # aliases are never expanded: "*sparkly* cat" is text
        return text
    if isinstance(value, dict) and not text.startswith("{"):
        return text  # "a cat: jumping" is a string
    return value


def parse_grid(texts: Iterable[str]) -> dict[str, list[Any]]:
    """``["settings.start_step=2,4,8", "settings.start_layer=[8, 10]"]`` -> {key: [raw values]}."""
    axes: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"--grid {text!r}: expected key=value1,value2,..., e.g. --grid settings.start_step=2,4,8")
        if key in axes:
            raise SweepError(f"--grid {key}: given twice; list all its values in one --grid {key}=a,b,c")
        if raw.strip().startswith("["):
            try:
                values = load_yaml(raw, check_duplicates=False)
            except (yaml.YAMLError, YamlRefused) as exc:
                raise SweepError(f"--grid {key}: {raw!r} is not a valid list ({exc})") from None
            if not isinstance(values, list):
                raise SweepError(f"--grid {key}: {raw!r} is not a list; write {key}=[a, b] or {key}=a,b")
        else:
            values = [_scalar(part, key) for part in raw.split(",")]
        axes[key] = values
    return axes


def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if not isinstance(key, str) or not key.strip():
            raise SweepError(f"sweep: {key!r} is not a setting name; use dotted keys such as settings.start_step")
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _model_in(annotation: Any) -> Optional[type[BaseModel]]:
    """The pydantic model inside ``annotation`` (X, Optional[X]); None for values and unions of models."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is Annotated:
        return _model_in(get_args(annotation)[0])
    if get_origin(annotation) is Union:
        models = [a for a in get_args(annotation) if a is not type(None)]
        if len(models) == 1:
            return _model_in(models[0])
    return None


def _is_union_of_models(annotation: Any) -> bool:
    if get_origin(annotation) is Annotated:
        return _is_union_of_models(get_args(annotation)[0])
    if get_origin(annotation) is Union:
        return any(_model_in(a) is not None or _is_union_of_models(a) for a in get_args(annotation))
    return False


def field_adapter(key: str, model: type[BaseModel]) -> TypeAdapter:
    """A validator for the field at dotted ``key`` of the job model ``model`` (its type and bounds,
    not cross-field rules)."""
    parts = key.split(".")
    if any(not p for p in parts):
        raise SweepError(f"sweep {key}: empty part in the key; use dotted keys such as settings.start_step")
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the job"
        fields = model.model_fields
        if part not in fields:
            raise SweepError(f"sweep {key}: {here} has no field {part!r}; its fields are {', '.join(fields)}")
        info = fields[part]
        if (why := not_hashed_reason(info)) is not None and key not in SWEEPABLE_OUTPUT_SETTINGS:
            # Sweeping it would render the same cell twice (the markers also keep it out of the hashes).
            raise SweepError(f"sweep {key}: {'.'.join(parts[: i + 1])} does not change the frames ({why}); sweep "
                             "render settings such as settings.start_step, settings.start_layer, "
                             f"settings.controlnet_scale, or {' / '.join(sorted(SWEEPABLE_OUTPUT_SETTINGS))}")
        inner = _model_in(info.annotation)
        last = i == len(parts) - 1
        if not last:
            if inner is None:
                what = "a choice of several kinds" if _is_union_of_models(info.annotation) else "a value"
                raise SweepError(f"sweep {key}: {'.'.join(parts[: i + 1])} is {what}, not a section with fields "
                                 "to sweep; sweep the whole value instead")
            model = inner
        elif inner is not None:
            raise SweepError(f"sweep {key}: is a section; sweep one of its fields: "
                             f"{', '.join(key + '.' + f for f in inner.model_fields)}")
    return TypeAdapter(Annotated[info.annotation, info])


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    msg = err.get("msg", str(exc))
    return msg[len("Value error, "):] if msg.startswith("Value error, ") else msg


def typed_axis(key: str, values: Any, model: type[BaseModel]) -> SweepAxis:
    """Check and type one axis: every value through the field's own type; no duplicates."""
    if not isinstance(values, (list, tuple)):
        values = [values]
    if not values:
        raise SweepError(f"sweep {key}: no values; give at least one, e.g. {key}: [a, b]")
    adapter = field_adapter(key, model)
    typed: list[Any] = []
    for raw in values:
        try:
            value = adapter.dump_python(adapter.validate_python(raw), mode="json")
        except ValidationError as exc:
            raise SweepError(f"sweep {key}: {raw!r} is not a valid value ({_first_error(exc)})") from None
        if value in typed:
            raise SweepError(f"sweep {key}: the value {value!r} is listed twice; list each value once")
        typed.append(value)
    return SweepAxis(key=key, values=typed)


def parse_axes(mapping: Optional[Mapping], grid: Iterable[str], model: type[BaseModel]) -> SweepSpec:
    """A job file's ``sweep:`` mapping plus ``--grid`` strings -> axes typed by the job model
    ``model`` (passed in: the job model validates its own sweep section with this) and frame indices."""
    if mapping is not None and not isinstance(mapping, Mapping):
        raise SweepError(f"sweep: expected a mapping of setting -> values, got {type(mapping).__name__}")
    mapping = dict(mapping or {})
    frames = mapping.pop("frames", None)
    raw = flatten(mapping)
    raw.update(parse_grid(grid))
    if not raw:
        raise SweepError("sweep: no settings to sweep; give e.g. --grid settings.start_step=2,4,8")
    axes = [typed_axis(key, values, model) for key, values in raw.items()]
    spec = SweepSpec(axes=axes, frames=frame_list(frames))
    if spec.cell_count > MAX_CELLS:
        raise SweepError(f"sweep: {spec.cell_count} cells is more than {MAX_CELLS}; sweep fewer values")
    return spec


def frame_list(frames: Any) -> Optional[list[int]]:
    if frames is None:
        return None
    if not isinstance(frames, (list, tuple)) or not frames:
        raise SweepError(f"sweep.frames: expected a list of frame indices such as [0, 4, 8], got {frames!r}")
    out = []
    for f in frames:
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise SweepError(f"sweep.frames: {f!r} is not a frame index (0, 1, 2, ...)")
        if f not in out:
            out.append(f)
    return out


def select_frames(count: int, frames: Optional[Sequence[int]] = None, max_frames: int = DEFAULT_SWEEP_FRAMES) -> list[int]:
    """Frame indices to render per cell: ``frames`` checked against ``count``, else at most
    ``max_frames`` spread evenly from the first to the last frame."""
    if count < 1:
        raise SweepError("sweep: the job has no frames to render")
    if frames is not None:
        frames = frame_list(list(frames))
        for f in frames:
            if f >= count:
                raise SweepError(f"sweep.frames: {f} is not a frame of this job (it has frames 0-{count - 1})")
        return frames
    n = max(1, min(count, max_frames))
    if n == 1:
        return [0]
    return sorted({round(k * (count - 1) / (n - 1)) for k in range(n)})
