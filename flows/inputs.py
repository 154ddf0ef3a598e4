"""Checks of user inputs that are cheap enough to run before any work (issue 13 C.4-C.6).

Everything here raises ``ValueError`` with a message that says what is wrong and how to fix it
(the job model's validators put the field name in front), or returns a list of
``(field, message)`` problems (:func:`environment_problems`) for the CLI to print.

- :func:`open_image` opens a picture safely: the path's length, the pixel count read from the
  header (a decompression bomb is refused before any pixel is decoded), then the whole image
  decoded (a PNG with corrupt zlib data but valid CRCs passes ``verify()`` and fails here), and
  high-bit-depth modes scaled to 8 bits (:func:`to_rgb8`).
- :func:`environment_problems`: what a job needs from the machine it runs on (a writable output
  folder, the CUDA device it names, a reachable Dask scheduler, a hub model in the local cache
  when offline).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from PIL import Image

from pose_sources.images import to_rgb8

MAX_FRAME_SIDE = 2048
# The largest frame is 2048x2048; a source may be bigger (it is cropped and resized), but a picture
# of more than 16 times that many pixels costs seconds and gigabytes to decode for nothing.
MAX_SOURCE_PIXELS = 16 * MAX_FRAME_SIDE * MAX_FRAME_SIDE


def path_length_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` is longer than the file system allows, or None."""
    text = os.fspath(path)
    try:
        path_max = os.pathconf("/", "PC_PATH_MAX")
        name_max = os.pathconf("/", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX
        path_max, name_max = 4096, 255
    if len(os.fsencode(text)) >= path_max:
        return f"the path is {len(text)} characters long; the system allows {path_max - 1}"
    longest = max((len(os.fsencode(part)) for part in Path(text).parts), default=0)
    if longest > name_max:
        return f"a file or folder name in the path is {longest} bytes long; the system allows {name_max}"
    return None


def open_image(path: str | os.PathLike, max_pixels: int = MAX_SOURCE_PIXELS) -> Image.Image:
    """Open, size-check and fully decode a picture; returns it as 8-bit RGB.

    Raises ValueError naming the problem and the fix (missing file, path too long, too many
    pixels, not an image, corrupt image data).
    """
    text = os.fspath(path)
    problem = path_length_problem(text)
    if problem:
        raise ValueError(f"{problem}; move the file to a shorter path")
    try:
        if not Path(text).expanduser().is_file():
            raise ValueError(f"{text!r} does not exist or is not a file; give the path of a picture")
    except OSError as exc:
        raise ValueError(f"{text!r} cannot be accessed ({exc.strerror or exc})") from None
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # our limit below; Pillow's own warns or raises mid-way
        with Image.open(Path(text).expanduser()) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{text!r} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), more than the limit of "
                    f"{max_pixels / 1e6:.0f} MP; scale the picture down (frames are at most "
                    f"{MAX_FRAME_SIDE}x{MAX_FRAME_SIDE})")
            img.load()  # decode everything: corrupt compressed data only shows here
            return to_rgb8(img)
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise ValueError(f"{text!r} is not a readable image ({exc}); give an intact PNG or JPEG file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def writable_folder_problem(folder: str | os.PathLike) -> Optional[str]:
    """Why results cannot be written below ``folder`` (created if missing), or None.

    Probes the nearest existing folder with an unnamed temporary file (O_TMPFILE where the
    system has it), so nothing appears in it, even for root, who passes every permission bit.
    """
    path = Path(folder).expanduser().absolute()
    problem = path_length_problem(path)
    if problem:
        return problem
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so {path} cannot be created; pick another folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user; pick a folder you can write to"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or exc}); pick a writable folder"
    return None


def cuda_problem(device: Optional[str]) -> Optional[str]:
    if not device or not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"{device!r} asked for, but this machine has no usable CUDA device; use 'cpu' or leave it empty"
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        return f"{device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) are visible"
    return None


def dask_problem(address: Optional[str], timeout: float = 3.0) -> Optional[str]:
    """Whether a TCP connection to the Dask scheduler at ``address`` opens within ``timeout`` s."""
    if not address:
        return None
    import socket
    from urllib.parse import urlsplit

    text = address if "://" in address else f"tcp://{address}"
    parts = urlsplit(text)
    host, port = parts.hostname, parts.port or 8786
    if parts.scheme not in ("tcp", "tls") or not host:
        return None  # other transports (ucx, inproc) cannot be probed cheaply
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return (f"no Dask scheduler answers at {address} ({reason} after {timeout:g} s); start it "
                "(`dask scheduler`) or fix the address")


def hub_model_problem(name: Optional[str]) -> Optional[str]:
    """With HF_HUB_OFFLINE set, a hub id must already be in the local cache."""
    if not name or "/" not in name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if not offline:
        return None
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(name, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not usable offline"
        return (f"{name!r} is a hub id, HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache; "
                "download it on a machine with network access or give a local folder")
    return None


def environment_problems(job, *, check_dask: bool = True) -> list[tuple[str, str]]:
    """What the job needs from this machine and does not get, as ``(field, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    checks = [
        ("output.folder", lambda: writable_folder_problem(job.output.folder)),
        ("model.device", lambda: cuda_problem(job.model.device)),
        ("model.model", lambda: hub_model_problem(job.model.model)),
        ("model.controlnet", lambda: hub_model_problem(job.model.controlnet) if job.uses_poses else None),
    ]
    if check_dask:
        checks.append(("execution.dask_address", lambda: dask_problem(job.execution.dask_address)))
    for field, check in checks:
        message = check()
        if message:
            problems.append((field, message))
    return problems


INPUT_ROOTS_ENV = "MASACTRL_INPUT_ROOTS"
OUTPUT_ROOT_ENV = "MASACTRL_OUTPUT_ROOT"


def _roots(environ, name: str) -> list[Path]:
    raw = (environ.get(name) or "").strip()
    return [Path(os.path.realpath(Path(r).expanduser())) for r in raw.split(os.pathsep) if r.strip()]


def _inside(path: str | os.PathLike, roots: list[Path]) -> bool:
    # realpath: a symlink inside a root that points outside it does not count as inside.
    real = os.path.realpath(Path(path).expanduser())
    return any(os.path.commonpath([real, str(root)]) == str(root) for root in roots)


def _pose_input_paths(job) -> list[tuple[str, str]]:
    poses = job.frames.poses
    if poses is None:
        return []
    out = []
    for name in ("path", "source", "detector_dir"):
        value = getattr(poses, name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, (str, os.PathLike)) and str(v).strip():
                # a glob is judged by the folder before its first wildcard
                text = os.fspath(v)
                fixed = text.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
                out.append((f"frames.poses.{name}", fixed or "."))
    return out


def input_root_problem(path: str | os.PathLike, environ=None) -> Optional[str]:
    """Why ``path`` may not be read (outside ``$MASACTRL_INPUT_ROOTS``), or None (inside, or unset)."""
    allowed = _roots(os.environ if environ is None else environ, INPUT_ROOTS_ENV)
    if not allowed or _inside(path, allowed):
        return None
    where = ", ".join(str(r) for r in allowed)
    return f"{os.fspath(path)} is outside the input folders this server reads ({where}); put the file there"


def output_root_problem(folder: str | os.PathLike, environ=None) -> Optional[str]:
    """Why results may not be written below ``folder`` (outside ``$MASACTRL_OUTPUT_ROOT``), or None."""
    root = _roots(os.environ if environ is None else environ, OUTPUT_ROOT_ENV)[:1]
    if not root or _inside(folder, root):
        return None
    return f"{os.fspath(folder)} is outside the output root {root[0]}; give a folder below it"


def confinement_problems(job, environ=None) -> list[tuple[str, str]]:
    """Inputs outside ``$MASACTRL_INPUT_ROOTS`` and an output folder outside ``$MASACTRL_OUTPUT_ROOT``.

    ``serve`` and deploy/ set both for runs triggered through the server (UI, ``submit``, inbox),
    so a form user cannot read ``/etc/shadow`` as a source or write into ``/etc``. Unset: no
    confinement (local CLI runs keep their freedom).
    """
    problems: list[tuple[str, str]] = []
    candidates = [("source.image", os.fspath(job.source.image))] if job.source.image is not None else []
    for field, path in candidates + _pose_input_paths(job):
        if (problem := input_root_problem(path, environ)):
            problems.append((field, problem))
    if (problem := output_root_problem(job.output.folder, environ)):
        problems.append(("output.folder", problem))
    return problems


def run_problems(job, environ=None) -> list[tuple[str, str]]:
    """What a flow run refuses right after validating its job, as ``(field, message)`` pairs: paths
    outside the configured roots (C.5; then nothing else is probed there), what this worker cannot
    give the job (writable output folder, CUDA, Dask scheduler, cached hub model), and a subject
    word that the text encoder never reads (C.4, flows/prompt_limits.py)."""
    from .prompt_limits import check_prompts

    confined = confinement_problems(job, environ)
    if confined:
        return confined
    return environment_problems(job) + check_prompts(job).errors


__all__ = [
    "confinement_problems",
    "MAX_SOURCE_PIXELS",
    "environment_problems",
    "open_image",
    "path_length_problem",
    "run_problems",
    "to_rgb8",
    "writable_folder_problem",
]

