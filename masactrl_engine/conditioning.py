"""Text conditioning per model family: prompt -> UNet inputs, with a bounded prompt cache.

SD 1.x / 2.x: the text encoder's last hidden state (what ``StableDiffusionPipeline.encode_prompt``
computes without clip skip). SDXL: both encoders' penultimate hidden states concatenated, the
second encoder's projected (pooled) embedding, and the size/crop time ids, exactly as
``StableDiffusionXLPipeline`` builds them (original size = target size = the image size, crop at
(0, 0)); an empty negative prompt is all zeros when the checkpoint says
``force_zeros_for_empty_prompt`` (as the published SDXL script gets by passing no negative prompt).

A long-lived worker sees an unbounded stream of prompts: the cache keeps the most recently used
``cache_size`` encodings and forgets the rest.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .errors import EngineInputError
from .families import is_sdxl_unet

DEFAULT_PROMPT_CACHE_SIZE = 256


@dataclass(frozen=True)
class TextConditioning:
    """Conditioning of a batch of UNet rows: ``hidden`` (rows, tokens, width) for cross-attention and,
    for SDXL, ``pooled`` (rows, width_2) for the added text-time embedding."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.hidden.shape[0]

    def expand(self, rows: int) -> "TextConditioning":
        """One prompt's conditioning repeated for ``rows`` rows (views, no copies)."""
        pooled = None if self.pooled is None else self.pooled.expand(rows, -1)
        return TextConditioning(self.hidden.expand(rows, -1, -1), pooled)

    @staticmethod
    def cat(parts: list["TextConditioning"]) -> "TextConditioning":
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])
        return TextConditioning(torch.cat([p.hidden for p in parts]), pooled)

    def repeat(self, times: int) -> "TextConditioning":
        """The rows ``times`` times over (e.g. for a batch [rows | rows])."""
        return TextConditioning.cat([self] * times)


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
        if self.sdxl:
            self.tokenizer_2 = getattr(pipe, "tokenizer_2", None)
            self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)
            if self.tokenizer_2 is None or self.text_encoder_2 is None:
                raise EngineInputError(
                    "model: an SDXL UNet needs the pipeline's tokenizer_2 and text_encoder_2; load it with load_pipeline"
                )
            self.force_zeros = bool(getattr(pipe, "config", {}).get("force_zeros_for_empty_prompt", True))
            self.time_dim = pipe.unet.config.addition_time_embed_dim
        self._cache: OrderedDict[str, TextConditioning] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    # ------------------------------------------------------------ one prompt

    def _ids(self, tokenizer, prompt: str) -> torch.Tensor:
        return tokenizer(
            prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    @torch.no_grad()
    def _encode(self, prompt: str) -> TextConditioning:
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

    def negative(self, prompt: str) -> TextConditioning:
        """The unconditional row: SDXL's zeros for an empty negative prompt when the checkpoint
        asks for them, otherwise the prompt's encoding."""
        if self.sdxl and self.force_zeros and prompt == "":
            like = self.embed("")
            return TextConditioning(torch.zeros_like(like.hidden), torch.zeros_like(like.pooled))
        return self.embed(prompt)

    # ------------------------------------------------------------ batches

    def rows(self, prompts: list[str], negative_prompt: str, guided: bool) -> TextConditioning:
        """Conditioning for a UNet batch: ``[negative x B | prompts]`` under CFG, ``prompts`` without."""
        conditional = TextConditioning.cat([self.embed(p) for p in prompts])
        if not guided:
            return conditional
        return TextConditioning.cat([self.negative(negative_prompt).expand(len(prompts)), conditional])

    def added_cond_kwargs(self, cond: TextConditioning, height: int, width: int) -> dict | None:
        """SDXL's extra UNet (and ControlNet) inputs for images of ``height`` x ``width`` pixels:
        the pooled text embeddings and time ids (original size, crop top-left (0, 0), target size)."""
        if not self.sdxl:
            return None
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=cond.pooled.dtype, device=self.device)
        return {"text_embeds": cond.pooled, "time_ids": time_ids.expand(cond.rows, -1)}
