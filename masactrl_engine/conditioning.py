"""Text conditioning per model family: prompt -> UNet inputs, with a bounded prompt cache.

SD 1.x / 2.x: the text encoder's last hidden state (what ``StableDiffusionPipeline.encode_prompt``
computes without clip skip). SDXL: both encoders' penultimate hidden states concatenated, the
second encoder's projected (pooled) embedding, and the size/crop time ids, exactly as
``StableDiffusionXLPipeline`` builds them (original size = target size = the image size, crop at
(0, 0)); an empty negative prompt is all zeros when the checkpoint says
``force_zeros_for_empty_prompt`` (as the published SDXL script gets by passing no negative prompt).

Weighted and long prompts go through ``compel``: ``(word)1.3``, ``word+``/``word-`` and, rewritten
to compel's form first, A1111's ``(word:1.3)``. A prompt longer than the encoder's window (77 tokens
with the start and end marks) becomes several 77-token chunks, each encoded alone and
concatenated along the tokens, as A1111 does; SDXL's pooled embedding comes from the first chunk
(A1111 again; compel's own pooled path would tokenize the raw text, weighting syntax included).
A prompt without weights that fits the window takes the plain path above, so plain prompts keep
exactly the conditioning they always had. Rows of one UNet batch must hold as many tokens: shorter
ones are padded with chunks of the empty prompt's encoding (compel's padding), so the engine
batches frames of equal length only (a frame's result must not depend on its batch).

Prompt travel: ``interpolate`` mixes two prompts' conditioning (hidden states and, for SDXL, the
pooled embeddings; the time ids depend on the image size only, so they are the same for both).

A long-lived worker sees an unbounded stream of prompts: the cache keeps the most recently used
``cache_size`` encodings and forgets the rest.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from compel import Compel
from compel.embeddings_provider import EmbeddingsProvider, ReturnedEmbeddingsType, SplitLongTextMode
from compel.prompt_parser import FlattenedPrompt

from .errors import EngineInputError
from .families import is_sdxl_unet

log = logging.getLogger("masactrl_engine")

DEFAULT_PROMPT_CACHE_SIZE = 256
CHUNK = 77  # tokens per encoder pass, start and end marks included

# A1111's ``(text:1.3)``; compel reads the colon as text, so it is rewritten to ``(text)1.3``.
_A1111_WEIGHT = re.compile(r"\(([^():]+):\s*([0-9]*\.?[0-9]+)\s*\)")
# Characters (and the ``.and()``-style calls) compel gives a meaning; a prompt without any is plain.
_SYNTAX = re.compile(r"[()+\-\\]|\.\w+\(")


@dataclass(frozen=True)
class TextConditioning:
    """Conditioning of a batch of UNet rows: ``hidden`` (rows, tokens, width) for cross-attention and,
    for SDXL, ``pooled`` (rows, width_2) for the added text-time embedding."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.hidden.shape[0]

    @property
    def tokens(self) -> int:
        return self.hidden.shape[1]

    def expand(self, rows: int) -> "TextConditioning":
        """One prompt's conditioning repeated for ``rows`` rows (views, no copies)."""
        pooled = None if self.pooled is None else self.pooled.expand(rows, -1)
        return TextConditioning(self.hidden.expand(rows, -1, -1), pooled)

    def padded(self, tokens: int, filler: torch.Tensor) -> "TextConditioning":
        """The rows with ``filler`` chunks (1, k, width) appended up to ``tokens`` tokens."""
        if self.tokens == tokens:
            return self
        if self.tokens > tokens or (tokens - self.tokens) % filler.shape[1]:
            raise ValueError(f"cannot pad {self.tokens} tokens to {tokens} with chunks of {filler.shape[1]}")
        repeats = (tokens - self.tokens) // filler.shape[1]
        fill = filler.to(self.hidden.dtype).expand(self.rows, -1, -1).repeat(1, repeats, 1)
        return TextConditioning(torch.cat([self.hidden, fill], dim=1), self.pooled)

    @staticmethod
    def cat(parts: list["TextConditioning"]) -> "TextConditioning":
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return TextConditioning(torch.cat([p.hidden for p in parts]), pooled)

    def repeat(self, times: int) -> "TextConditioning":
        """The rows ``times`` times over (e.g. for a batch [rows | rows])."""
        return TextConditioning.cat([self] * times)


# ---------------------------------------------------------------- weighting syntax


def compel_syntax(prompt: str) -> str:
    """``prompt`` with A1111's ``(text:1.3)`` weights written the way compel reads them, ``(text)1.3``."""
    return _A1111_WEIGHT.sub(r"(\1)\2", prompt)


def parse_prompt(prompt: str) -> tuple[list[str], list[float]]:
    """The prompt's text fragments and their weights, as compel parses it.

    A prompt without any weighting syntax is one fragment of weight 1, itself. Compel's
    ``.and()``, ``.blend()`` and ``.swap()`` are refused (they need more than one conditioning per
    row); text compel cannot parse (e.g. an unmatched parenthesis) is read as plain text.
    """
    if not _SYNTAX.search(prompt):
        return [prompt], [1.0]
    try:
        conjunction = Compel.parse_prompt_string(compel_syntax(prompt))
    except Exception as exc:  # noqa: BLE001 - compel's parser raises several kinds; unparsable means plain text
        log.warning("prompt %r: not parsed as weighted (%s); read as plain text", prompt, exc)
        return [prompt], [1.0]
    parts = conjunction.prompts
    if len(parts) != 1 or type(parts[0]) is not FlattenedPrompt or parts[0].wants_cross_attention_control:
        raise EngineInputError(
            f"prompt: {prompt!r} uses compel's .and()/.blend()/.swap(), which this engine does not support; "
            "use weights such as (word)1.3 or prompt keyframes instead"
        )
    fragments = [child.text for child in parts[0].children]
    weights = [float(child.weight) for child in parts[0].children]
    return fragments, weights


# ---------------------------------------------------------------- prompt travel


def _slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of each vector along the last dimension (lengths interpolate too,
    as in the usual latent slerp); nearly parallel vectors fall back to linear."""
    a32, b32 = a.float(), b.float()
    cos = (a32 * b32).sum(-1, keepdim=True) / (a32.norm(dim=-1, keepdim=True) * b32.norm(dim=-1, keepdim=True))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, torch.full_like(sin, 1.0 - t), torch.sin((1.0 - t) * theta) / safe)
    wb = torch.where(parallel, torch.full_like(sin, t), torch.sin(t * theta) / safe)
    return (wa * a32 + wb * b32).to(a.dtype)


def _lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    return ((1.0 - t) * a.float() + t * b.float()).to(a.dtype)


def interpolate(a: TextConditioning, b: TextConditioning, t: float, mode: str) -> TextConditioning:
    """``t`` of the way from ``a`` to ``b`` (same shapes): "linear", "slerp" or "hold" (``a``
    until ``t`` reaches 1). ``t`` 0 and 1 give ``a`` and ``b`` themselves."""
    if t <= 0 or mode == "hold" and t < 1:
        return a
    if t >= 1:
        return b
    if a.hidden.shape != b.hidden.shape:
        raise ValueError(f"interpolate: shapes differ ({tuple(a.hidden.shape)} vs {tuple(b.hidden.shape)}); pad first")
    mix = _slerp if mode == "slerp" else _lerp
    pooled = None if a.pooled is None else mix(a.pooled, b.pooled, t)
    return TextConditioning(mix(a.hidden, b.hidden, t), pooled)


class PromptEncoder:
    """Encodes prompts for one pipeline's family and caches the results (LRU by count)."""

    def __init__(self, pipe, device, dtype, cache_size: int = DEFAULT_PROMPT_CACHE_SIZE):
        if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 0:
            raise EngineInputError(
                f"prompt_cache_size: {cache_size!r} must be a whole number >= 0 (0 turns the cache off)"
            )
        self.device, self.dtype, self.cache_size = device, dtype, cache_size
        self.tokenizer, self.text_encoder = pipe.tokenizer, pipe.text_encoder
        self.sdxl = is_sdxl_unet(pipe.unet.config)
        pairs = [(self.tokenizer, self.text_encoder)]
        if self.sdxl:
            self.tokenizer_2 = getattr(pipe, "tokenizer_2", None)
            self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)
            if self.tokenizer_2 is None or self.text_encoder_2 is None:
                raise EngineInputError(
                    "model: an SDXL UNet needs the pipeline's tokenizer_2 and text_encoder_2; load it with load_pipeline"
                )
            self.force_zeros = bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", True))
            self.time_dim = pipe.unet.config.addition_time_embed_dim
            pairs.append((self.tokenizer_2, self.text_encoder_2))
        # compel's providers, for weighted and long prompts: what the plain path takes from each encoder.
        kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if self.sdxl
                else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
        # PHRASES: a chunk ends after the last comma or full stop that fits (else a word's end),
        # close to A1111's comma rule, so no word is cut in two between chunks.
        self._providers = [
            EmbeddingsProvider(tokenizer, encoder, truncate=False, returned_embeddings_type=kind, device=device,
                               split_long_text_mode=SplitLongTextMode.PHRASES)
            for tokenizer, encoder in pairs
        ]
        self._cache: OrderedDict[str, TextConditioning] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    # ------------------------------------------------------------ one prompt

    def _ids(self, tokenizer, prompt: str) -> torch.Tensor:
        return tokenizer(
            prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def _fits(self, text: str) -> bool:
        limit = self.tokenizer.model_max_length
        return len(self.tokenizer(text, truncation=False, verbose=False).input_ids) <= limit

    def _route(self, prompt: str) -> tuple[str, list[str], list[float]]:
        """``("plain", [text], [1.0])`` for a prompt without weights that fits the window (encoded
        as ever), else ``("weighted", fragments, weights)`` for compel."""
        fragments, weights = parse_prompt(prompt)
        if all(w == 1.0 for w in weights):
            text = " ".join(fragments)
            if self._fits(text):
                return "plain", [text], [1.0]
        return "weighted", fragments, weights

    def token_ids(self, prompt: str) -> list[int]:
        """The first tokenizer's ids laid out as the conditioning's tokens are: one window for a
        plain prompt (start mark first, unpadded), the chunked, padded sequence of a weighted or
        long one (its weighting syntax parsed away)."""
        route, fragments, weights = self._route(prompt)
        if route == "plain":
            return list(self.tokenizer(fragments[0], truncation=True, max_length=self.tokenizer.model_max_length)
                        .input_ids)
        ids, _, _ = self._providers[0].get_token_ids_and_expand_weights(fragments, weights, device="cpu")
        return ids.tolist()

    @torch.no_grad()
    def _encode_plain(self, prompt: str) -> TextConditioning:
        if not self.sdxl:
            return TextConditioning(self.text_encoder(self._ids(self.tokenizer, prompt))[0].to(self.dtype))
        states = []
        pooled = None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            out = encoder(self._ids(tokenizer, prompt), output_hidden_states=True)
            if out[0].ndim == 2:  # the projection model's pooled text embedding
                pooled = out[0]
            states.append(out.hidden_states[-2])
        return TextConditioning(torch.cat(states, dim=-1).to(self.dtype), pooled.to(self.dtype))

    @torch.no_grad()
    def _encode_weighted(self, prompt: str, fragments: list[str], weights: list[float]) -> TextConditioning:
        device = str(self.device)
        states = [provider.get_embeddings_for_weighted_prompt_fragments([fragments], [weights], device=device)
                  for provider in self._providers]
        if len({s.shape[1] for s in states}) > 1:
            raise EngineInputError(
                f"prompt: {prompt!r} splits into different chunks for the two SDXL tokenizers "
                f"({[s.shape[1] for s in states]} tokens); shorten it to one window ({CHUNK} tokens)"
            )
        hidden = torch.cat(states, dim=-1).to(self.dtype)
        if not self.sdxl:
            return TextConditioning(hidden)
        # A1111's pooled embedding: the second encoder's projection of the first chunk's tokens
        # (weighting syntax parsed away, weights not applied).
        ids, _, _ = self._providers[1].get_token_ids_and_expand_weights(fragments, weights, device=device)
        pooled = self.text_encoder_2(ids[None, :CHUNK].to(self.device))[0]
        return TextConditioning(hidden, pooled.to(self.dtype))

    def _encode(self, prompt: str) -> TextConditioning:
        route, fragments, weights = self._route(prompt)
        if route == "plain":
            return self._encode_plain(fragments[0])
        return self._encode_weighted(prompt, fragments, weights)

    def embed(self, prompt: str) -> TextConditioning:
        """Conditioning of one prompt (one row), from the cache when it was seen recently."""
        if not isinstance(prompt, str):
            raise EngineInputError(f"prompt: expected a string, got {type(prompt).__name__}")
        hit = self._cache.get(prompt)
        if hit is not None:
            self._cache.move_to_end(prompt)
            return hit
        value = self._encode(prompt)
        if self.cache_size:
            self._cache[prompt] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return value

    def negative(self, prompt: str, tokens: int | None = None) -> TextConditioning:
        """The unconditional row (padded to ``tokens`` tokens when given): SDXL's zeros for an
        empty negative prompt when the checkpoint asks for them, otherwise the prompt's encoding."""
        if self.sdxl and self.force_zeros and prompt == "":
            like = self.embed("")
            hidden = torch.zeros_like(like.hidden)
            if tokens is not None:
                hidden = hidden.new_zeros(1, tokens, hidden.shape[-1])
            return TextConditioning(hidden, torch.zeros_like(like.pooled))
        return self.pad(self.embed(prompt), tokens)

    def pad(self, cond: TextConditioning, tokens: int | None) -> TextConditioning:
        """``cond`` padded to ``tokens`` tokens with chunks of the empty prompt's encoding."""
        if tokens is None or cond.tokens == tokens:
            return cond
        return cond.padded(tokens, self.embed("").hidden)

    def travel(self, prompt: str, prompt_to: str | None = None, t: float = 0.0,
               mode: str = "linear") -> TextConditioning:
        """One frame's conditioning: ``prompt``'s, or ``t`` of the way to ``prompt_to``'s (the shorter
        one padded to the longer one's chunks first). Keyframes (``t`` 0 or 1) get their prompt's own."""
        a = self.embed(prompt)
        if prompt_to is None or t <= 0 or mode == "hold" and t < 1:
            return a
        b = self.embed(prompt_to)
        if t >= 1:
            return b
        tokens = max(a.tokens, b.tokens)
        return interpolate(self.pad(a, tokens), self.pad(b, tokens), t, mode)

    def negative_tokens(self, negative_prompt: str) -> int:
        """Tokens of the negative prompt's conditioning (frames shorter than it are padded to it)."""
        if self.sdxl and self.force_zeros and negative_prompt == "":
            return CHUNK
        return self.embed(negative_prompt).tokens

    # ------------------------------------------------------------ batches

    def rows(self, prompts: list, negative_prompt: str, guided: bool) -> TextConditioning:
        """Conditioning for a UNet batch: ``[negative x B | prompts]`` under CFG, ``prompts`` without.

        ``prompts`` holds prompt strings or ready ``TextConditioning`` rows (e.g. from ``travel``);
        all rows are padded to the longest one (and, under CFG, to the negative prompt's length).
        """
        conditional = [p if isinstance(p, TextConditioning) else self.embed(p) for p in prompts]
        tokens = max(c.tokens for c in conditional)
        if guided:
            tokens = max(tokens, self.negative_tokens(negative_prompt))
        conditional = TextConditioning.cat([self.pad(c, tokens) for c in conditional])
        if not guided:
            return conditional
        return TextConditioning.cat([self.negative(negative_prompt, tokens).expand(len(prompts)), conditional])

    def added_cond_kwargs(self, cond: TextConditioning, height: int, width: int) -> dict | None:
        """SDXL's extra UNet (and ControlNet) inputs for images of ``height`` x ``width`` pixels:
        the pooled text embeddings and time ids (original size, crop top-left (0, 0), target size)."""
        if not self.sdxl:
            return None
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=cond.pooled.dtype, device=self.device)
        return {"text_embeds": cond.pooled, "time_ids": time_ids.expand(cond.rows, -1)}
