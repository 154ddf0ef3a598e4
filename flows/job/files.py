"""Job files (YAML or JSON) and ``--set key=value`` overrides.

Where relative paths point:
- inputs written in a job file (``source.image``, pose files, local model folders) are relative
  to the job file's folder, so a job file and its pictures can move together;
- ``output.folder`` is relative to ``output_base``: the current folder for the CLI, the inbox
  folder for inbox jobs (it may never contain '..');
- values given with ``--set`` are relative to the current folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from pydantic import ValidationError

from flows.job.model import POSE_FIELDS, AnimationJob
from flows.job.plan import plan_job
from flows.job.yaml_text import DuplicateKey, YamlRefused, load_yaml
from flows.jobdir.layout import JobFolder
from flows.jobdir.manifest import all_verified

JOB_SUFFIXES = (".yaml", ".yml", ".json")
# Fields of each pose spec kind (pose_sources.spec) that hold input paths.
POSE_PATH_FIELDS = {
    "openpose_json": ("path",),
    "images": ("source",),
    "video": ("path", "detector_dir"),
    "image": ("path", "detector_dir"),
    "keyframes": ("keyframes",),
}


class JobFileError(ValueError):
    """A job file that cannot be read or an override that cannot be applied; names the file/key."""


def _no_duplicate_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise DuplicateKey(f"{dupes[0]}: given twice in one JSON object; keep one")
    return dict(pairs)


def read_job_data(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{path}: cannot read the job file ({exc})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        else:
            data = load_yaml(text)
    except (DuplicateKey, YamlRefused) as exc:
        raise JobFileError(f"{path}: {exc}") from None
    except RecursionError:  # JSON nested thousands of levels deep
        raise JobFileError(f"{path}: nested more deeply than Python reads; a job file is a few levels deep") from None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise JobFileError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise JobFileError(f"{path}: a job file holds a mapping (source:, frames:, ...), got {type(data).__name__}")
    # A job file may wrap the job as {"job": {...}} (the flow's parameter name).
    if set(data) == {"job"} and isinstance(data["job"], dict):
        data = data["job"]
    return data


def _join(base: Path, value: Any) -> Any:
    if isinstance(value, str) and value.strip() and not Path(value).expanduser().is_absolute():
        return str(base / value)
    if isinstance(value, list):
        return [_join(base, v) for v in value]
    return value


def _join_if_exists(base: Path, value: Any) -> Any:
    # Model names may be hub ids ("owner/name"), which look like relative paths: only join when
    # the folder exists beside the job file.
    if isinstance(value, str) and value.strip() and not Path(value).expanduser().is_absolute():
        if (base / value).exists() or value.startswith("."):
            return str(base / value)
    return value


def resolve_input_paths(data: dict, base: Path) -> dict:
    """A copy of ``data`` with relative input paths made relative to ``base``."""
    data = copy.deepcopy(data)
    source = data.get("source")
    if isinstance(source, dict) and source.get("image") not in (None, ""):
        source["image"] = _join(base, source["image"])
    model = data.get("model")
    if isinstance(model, dict):
        for key in ("model", "controlnet"):
            if model.get(key):
                model[key] = _join_if_exists(base, model[key])
        for lora in model.get("loras") or ():
            if isinstance(lora, dict) and lora.get("path"):
                lora["path"] = _join_if_exists(base, lora["path"])
    frames = data.get("frames") if isinstance(data.get("frames"), dict) else {}
    # frames.poses, or one of the form's per-kind fields (frames.pose_json, ...), whose kind is implied
    for field, implied_kind in (("poses", None), *POSE_FIELDS.items()):
        poses = frames.get(field)
        if isinstance(poses, dict):
            for key in POSE_PATH_FIELDS.get(poses.get("kind", implied_kind or "openpose_json"), ()):
                if key in poses:
                    poses[key] = _join(base, poses[key])
    return data


def resolve_output_folder(data: dict, base: Path) -> dict:
    data = copy.deepcopy(data)
    output = data.setdefault("output", {})
    if isinstance(output, dict):
        folder = output.get("folder", "out")
        if isinstance(folder, str) and folder.strip() and ".." not in Path(folder).parts:
            output["folder"] = _join(base, folder)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'output.fps=12' -> (['output', 'fps'], 12). Values are YAML scalars or flow lists/mappings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise JobFileError(f"--set {text!r}: expected key=value, e.g. --set output.fps=12")
    parts = key.split(".")
    if any(not p for p in parts):
        raise JobFileError(f"--set {text!r}: empty part in the key {key!r}")
    try:
        value = load_yaml(raw, check_duplicates=False) if raw.strip() else ""
    except (yaml.YAMLError, YamlRefused):
        # Not YAML, or with aliases (never expanded): the text itself, e.g. a prompt "*sparkly* cat".
        value = raw
    # "a cat: jumping" would parse as a mapping: only braces mean one.
    if isinstance(value, dict) and not raw.strip().startswith("{"):
        value = raw
    return parts, value


def set_dotted(data: dict, parts: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            idx = _index(node, part, parts)
            node = node[idx]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise JobFileError(f"--set {'.'.join(parts)}: {'.'.join(parts[: i + 1])} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last) if last.isdigit() else None
        if idx is None:
            raise JobFileError(f"--set {'.'.join(parts)}: {last!r} is not a list index")
        if idx == len(node):
            node.append(value)
        else:
            node[_index(node, last, parts)] = value
    else:
        node[last] = value


def _index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise JobFileError(f"--set {'.'.join(parts)}: no item {part!r} in a list of {len(node)}")
    return int(part)


def _resolve_override(parts: list[str], value: Any, data: dict, cwd: Path) -> Any:
    """Make a path-valued override relative to ``cwd`` (whole sections are resolved as in a job file)."""
    if len(parts) < 3 and isinstance(value, dict):
        nested: dict = {}
        set_dotted(nested, parts, value)
        nested = resolve_input_paths(nested, cwd)
        if parts[:2] == ["output"] or parts == ["output"]:
            nested = resolve_output_folder(nested, cwd)
        for part in parts:
            nested = nested[part]
        return nested
    key = ".".join(parts)
    if key == "source.image":
        return _join(cwd, value) if value not in (None, "") else value
    if key in ("model.model", "model.controlnet"):
        return _join_if_exists(cwd, value)
    if key == "output.folder":
        return _join(cwd, value) if isinstance(value, str) and ".." not in Path(value).parts else value
    if parts[:2] == ["frames", "poses"] and len(parts) >= 3:
        poses = (data.get("frames") or {}).get("poses")
        kind = poses.get("kind", "openpose_json") if isinstance(poses, dict) else "openpose_json"
        if parts[2] in POSE_PATH_FIELDS.get(kind, ()):
            return _join(cwd, value)
    return value


def apply_overrides(data: dict, overrides: Iterable[str], cwd: Optional[Path] = None) -> dict:
    """Apply ``--set`` overrides; path values among them are relative to ``cwd``."""
    cwd = Path(cwd or Path.cwd()).absolute()
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        set_dotted(data, parts, _resolve_override(parts, value, data, cwd))
    return data


def load_job_data(path: str | Path, overrides: Iterable[str] = (), output_base: Optional[Path] = None) -> dict:
    path = Path(path).absolute()
    data = read_job_data(path)
    data = resolve_input_paths(data, path.parent)
    data = resolve_output_folder(data, Path(output_base or Path.cwd()).absolute())
    return apply_overrides(data, overrides)


def load_job(path: str | Path, overrides: Iterable[str] = (), output_base: Optional[Path] = None) -> AnimationJob:
    """Read, resolve, override and validate a job file (raises pydantic's ValidationError)."""
    return AnimationJob.model_validate(load_job_data(path, overrides, output_base))


def job_files(folder: str | Path) -> list[Path]:
    """The job files of an inbox folder (not recursive; hidden files ignored), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in JOB_SUFFIXES and not p.name.startswith("."))


def finished_result(job: AnimationJob) -> Optional[Path]:
    """The result.json of the job's folder when the job already finished (outputs still on disk)."""
    plan = plan_job(job, write=False)
    result = JobFolder(plan.job_dir).result
    if not result.is_file():
        return None
    try:
        doc = json.loads(result.read_text())
        paths = list(doc.get("outputs", {}).values()) + list(doc.get("frames", []))
    except (OSError, ValueError, AttributeError):
        return None
    if doc.get("missing_frames") or not all(Path(p).exists() for p in paths):
        return None  # a subset run's preview, or outputs gone
    # A frame that no longer matches its digest (cut, overwritten) means the job must run again.

    return result if all_verified(doc.get("frames", [])) else None


__all__ = [
    "JobFileError",
    "ValidationError",
    "apply_overrides",
    "finished_result",
    "job_files",
    "load_job",
    "load_job_data",
    "parse_override",
    "read_job_data",
]
