"""Prompts checked before any work: the weighting syntax the engine refuses or reads differently.

The engine encodes long prompts in 77-token chunks and parses weights with compel
(``masactrl_engine.conditioning``), so no part of a prompt is cut any more and a ``source.subject``
word is found wherever it stands. What is left to check:

- compel's ``.and()``, ``.blend()`` and ``.swap()`` need more than one conditioning per UNet row,
  which the engine does not do: an **error** naming the prompt's field, before any work;
- a parenthesised group without a weight, ``(word)``, and a bracketed one, ``[word]``, are A1111's
  x1.1 and /1.1 but compel's plain grouping and plain text: a **warning** naming the field and
  the spelling that weighs (``(word)1.1`` or ``(word:1.1)``).

Plain prompts (no parenthesis, bracket, sign or backslash) are passed without loading the engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Characters compel gives a meaning to: a prompt without any needs no parsing.
_SYNTAX = re.compile(r"[()\[\]+\-\\]|\.\w+\(")
# After A1111's (text:1.3) became compel's (text)1.3: a group that no weight or sign follows.
_BARE_GROUP = re.compile(r"\(([^()]*)\)(?![\d.+\-])")
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


@dataclass
class PromptReport:
    """``errors`` and ``warnings`` as ``(field, message)`` pairs."""

    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def prompt_fields(job) -> list[tuple[str, str]]:
    """Every prompt of the job with its field name (keyframes by their frame: ``frames.prompts[12]``)."""
    fields = [("source.prompt", job.source.prompt), ("source.inversion_prompt", job.source.inversion_prompt),
              ("settings.negative_prompt", job.settings.negative_prompt)]
    fields += job.frames.labelled_prompts()
    fields += [(f"frames.overrides[{k}].prompt", o.prompt) for k, o in enumerate(job.frames.overrides)
               if o.prompt is not None]
    return fields


def check_prompts(job) -> PromptReport:
    """Errors (weighting operators the engine refuses) and warnings (A1111 groups without a weight)."""
    report = PromptReport()
    fields = [(f, p) for f, p in prompt_fields(job) if p and _SYNTAX.search(p)]
    if not fields:
        return report
    # Loads torch and compel: only for prompts that use their syntax.
    from masactrl_engine import EngineInputError
    from masactrl_engine.conditioning import compel_syntax, parse_prompt

    for name, prompt in fields:
        try:
            parse_prompt(prompt)
        except EngineInputError as exc:
            report.errors.append((name, str(exc).removeprefix("prompt: ")))
            continue
        rewritten = compel_syntax(prompt)
        bare = [f"({m.group(1)})" for m in _BARE_GROUP.finditer(rewritten)]
        bare += [f"[{m.group(1)}]" for m in _BRACKETS.finditer(rewritten)]
        if bare:
            shown = ", ".join(repr(b) for b in bare[:3]) + (" ..." if len(bare) > 3 else "")
            report.warnings.append((name, (
                f"{shown}: without a weight, compel reads a group in parentheses as plain grouping and one in "
                "brackets as plain text (A1111 weighs them 1.1 and 1/1.1); to weigh it, write (word)1.1 or "
                "(word:1.1), and (word)0.9 for less")))
    return report


__all__ = ["PromptReport", "check_prompts", "prompt_fields"]
