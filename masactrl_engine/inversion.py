"""The inverted source: the whole DDIM inversion trajectory, saved and loaded as files."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import EngineInputError

TENSOR_FILE = "inversion.safetensors"
META_FILE = "inversion.json"


def _atomic_write(path: Path, write) -> None:
    # A fresh name created with mode 0666 minus the umask, like any ordinary file, so a worker on
    # another account (or a web server) can read the inversion (mkstemp would make it 0600).
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = tmp.stat().st_mode & 0o777
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # safetensors' writer replaces the file with a 0600 one
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class InvertedSource:
    """``trajectory[k]`` is the latent after ``k`` inversion steps: ``[0]`` is the encoded image
    (VAE posterior mean times the scaling factor), ``[-1]`` the start latent ``z_T`` of every frame.
    ``timesteps`` are the denoising timesteps it was made for.

    From ``SequenceEngine.synthesize`` it is a generation's own trajectory instead (``[-1]`` the
    drawn noise, ``[0]`` the final latent) and ``image`` holds the decoded source (a PIL image).
    ``image`` is a convenience of that call: it is not part of the digest, and ``save`` does not
    write it (save the picture yourself); ``load`` gives ``image=None``.
    """

    trajectory: torch.Tensor
    prompt: str
    height: int
    width: int
    timesteps: tuple[int, ...]
    digest: str = field(default="", compare=False)
    image: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", self._compute_digest())

    def _compute_digest(self) -> str:
        h = hashlib.sha256()
        h.update(self.trajectory.detach().float().cpu().contiguous().numpy().tobytes())
        h.update(json.dumps([self.prompt, self.height, self.width, list(self.timesteps)]).encode())
        return h.hexdigest()[:32]

    @property
    def num_steps(self) -> int:
        return self.trajectory.shape[0] - 1

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``inversion.safetensors`` and ``inversion.json`` into ``folder``, each atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"trajectory": self.trajectory.detach().cpu().contiguous()}
        meta = {"prompt": self.prompt, "height": self.height, "width": self.width,
                "timesteps": list(self.timesteps), "digest": self.digest}
        _atomic_write(folder / TENSOR_FILE, lambda p: save_file(tensors, p))
        _atomic_write(folder / META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, device=None) -> "InvertedSource":
        folder = Path(folder)
        for name in (TENSOR_FILE, META_FILE):
            if not (folder / name).is_file():
                raise EngineInputError(f"inversion: {folder / name} is missing; run engine.invert and save it first")
        meta = json.loads((folder / META_FILE).read_text())
        trajectory = load_file(folder / TENSOR_FILE, device=str(device or "cpu"))["trajectory"]
        inv = cls(trajectory, meta["prompt"], meta["height"], meta["width"], tuple(meta["timesteps"]))
        if inv.digest != meta["digest"]:
            raise EngineInputError(f"inversion: {folder} is corrupt (content does not match its digest); invert again")
        return inv
