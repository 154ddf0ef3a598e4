"""Prompts against the text encoder's token limit, checked before any work.

The CLIP text encoders of SD 1.x/2.x/XL read 77 tokens (start and end marks included); the
engine cuts longer prompts there (``masactrl_engine.conditioning``), and looks the subject's
words up in the cut prompt (``masactrl_engine.masks.subject_positions``). So:

- a ``source.subject`` word that occurs in a prompt only after the limit would fail the run at
  its first frame: an **error** here, naming ``source.subject`` and the prompt's field;
- a prompt longer than the limit loses its tail silently: a **warning** naming the field and
  the dropped words;
- two prompts that differ only after the limit give the same text conditioning (identical
  frames unless their poses or seeds differ): a **warning** naming both fields.

The model's own tokenizer is used when it is cheap to get offline: the tiny checkpoints'
``tokenizer/`` folder, a local diffusers folder's ``tokenizer/``, or a hub id's tokenizer files
already in the local Hugging Face cache; otherwise nothing is checked (no error). A prompt of at
most ``limit - 2`` non-blank ASCII characters cannot exceed the limit (a byte-level BPE never
makes more tokens than bytes), so short prompts are passed without loading a tokenizer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

from flows.job.checkpoints import tiny_checkpoint_dir
from flows.job.model import TINY_MODELS

DEFAULT_LIMIT = 77


@dataclass
class PromptReport:
    """``errors`` and ``warnings`` as ``(field, message)`` pairs."""

    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def tokenizer_folder(model: Optional[str]) -> Optional[Path]:
    """The tokenizer folder of ``model`` when it is on this machine, else None (never downloads)."""
    if not model:
        return None
    if model in TINY_MODELS:
        folder = tiny_checkpoint_dir(model) / "tokenizer"
    elif Path(model).expanduser().is_dir():
        folder = Path(model).expanduser() / "tokenizer"
    elif "/" in model and not model.startswith((".", "/", "~")):
        try:  # the local hub cache only
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "tokenizer/vocab.json")
        except Exception:  # noqa: BLE001 - not an id the cache knows: nothing to check with
            return None
        if not isinstance(found, str):
            return None
        folder = Path(found).parent
    else:
        return None
    has_files = (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()
    return folder if has_files else None


def token_limit(folder: Path) -> int:
    """``model_max_length`` of the tokenizer's config (77 when absent or unset)."""
    try:
        value = json.loads((folder / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        value = None
    return int(value) if isinstance(value, (int, float)) and 2 < value < 100_000 else DEFAULT_LIMIT


def cannot_exceed(prompt: str, limit: int) -> bool:
    """True when ``prompt`` is too short to be cut, without tokenizing it."""
    return prompt.isascii() and len("".join(prompt.split())) + 2 <= limit


@lru_cache(maxsize=8)
def load_tokenizer(folder: str):
    """The tokenizer in ``folder`` (CLIP's, else whatever AutoTokenizer finds), or None."""
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    try:
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception:  # noqa: BLE001
        pass
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception:  # noqa: BLE001 - no usable tokenizer: skip the checks
        return None


def prompt_fields(job) -> list[tuple[str, str]]:
    """Every prompt of the job with its field name."""
    fields = [("source.prompt", job.source.prompt), ("source.inversion_prompt", job.source.inversion_prompt),
              ("settings.negative_prompt", job.settings.negative_prompt)]
    fields += [(f"frames.prompts[{i}]", p) for i, p in enumerate(job.frames.prompts)]
    fields += [(f"frames.overrides[{k}].prompt", o.prompt) for k, o in enumerate(job.frames.overrides)
               if o.prompt is not None]
    return fields


def _subject_fields(job, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The prompts the engine looks the subject up in: the source prompt and the frames' prompts."""
    return [(f, p) for f, p in fields if f == "source.prompt" or f.startswith("frames.")]


def _find(ids: list[int], pieces: list[int]) -> list[int]:
    n = len(pieces)
    return [i for i in range(len(ids) - n + 1) if ids[i:i + n] == pieces] if n else []


def check_prompts(job) -> PromptReport:
    """Errors (subject only after the limit) and warnings (cut prompts, prompts equal within the limit)."""
    report = PromptReport()
    folder = tokenizer_folder(job.model.model)
    if folder is None:
        return report
    limit = token_limit(folder)
    fields = [(f, p) for f, p in prompt_fields(job) if p]
    if all(cannot_exceed(p, limit) for _, p in fields):
        return report
    tokenizer = load_tokenizer(str(folder))
    if tokenizer is None:
        return report
    ids = {p: list(tokenizer(p, truncation=False, verbose=False).input_ids) for _, p in fields}
    keep = limit - 1  # the start mark and limit - 2 tokens of the prompt; the end mark takes the last place

    for name, prompt in fields:
        full = ids[prompt]
        if len(full) > limit:
            dropped = tokenizer.decode(full[keep:-1]).strip()
            dropped = dropped if len(dropped) <= 200 else dropped[:200] + " ..."
            report.warnings.append((name, (
                f"the prompt is {len(full)} tokens long and the text encoder reads only {limit} (start and end marks "
                f"included), so these words are dropped: {dropped!r}; shorten the prompt or move what matters to "
                "the front")))

    if job.source.subject:
        for name, prompt in _subject_fields(job, fields):
            full = ids[prompt]
            for word in job.source.subject.split():
                pieces = list(tokenizer(word, add_special_tokens=False).input_ids)
                found = _find(full, pieces)
                if found and not any(i + len(pieces) <= keep for i in found):
                    report.errors.append(("source.subject", (
                        f"{word!r} occurs in {name} only after the text encoder's {limit}-token limit (at token "
                        f"{found[0]} of {len(full)}), so the model never reads it and no subject mask can be made; "
                        f"move {word!r} towards the front of that prompt or shorten it")))

    # Prompts the encoder cannot tell apart although their text differs.
    groups: dict[tuple[int, ...], list[tuple[str, str]]] = {}
    for name, prompt in fields:
        if name == "source.prompt" or name.startswith("frames."):
            groups.setdefault(tuple(ids[prompt][:keep]), []).append((name, prompt))
    for members in groups.values():
        distinct = {tuple(ids[p]) for _, p in members}
        if len(distinct) > 1:
            names = [n for n, _ in members]
            report.warnings.append((names[1] if names[0] == "source.prompt" else names[0], (
                f"{', '.join(names)} differ only after the text encoder's {limit}-token limit, so the model sees "
                "the same prompt: their frames get the same text conditioning (identical frames unless their poses "
                "or seeds differ); put the difference earlier in the prompts")))
    return report


__all__ = ["DEFAULT_LIMIT", "PromptReport", "check_prompts", "load_tokenizer", "prompt_fields", "token_limit",
           "tokenizer_folder"]
