"""Writes a small CLIP-style byte-level BPE vocabulary for the tiny offline checkpoint.

A real CLIP vocabulary has 49k entries learnt from data. Tests only need the mechanics to be
identical: byte-level symbols, ``</w>`` word-end variants, the two special tokens, and whole words
that map to one token each (so that "cat" in a prompt is one position a mask can look up).
"""

from __future__ import annotations

import json
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# Words the demo, the tests and typical prompts use; each becomes a single token.
WORDS = """
a an the of and with in on at to from by for is are photo picture image painting portrait
cat cats dog dogs person people man woman girl boy child astronaut robot horse bird fox bear
standing sitting jumping running walking waving dancing lying sleeping looking turning raising
hands hand arm arms leg legs head face body left right up down front back side view
street park room garden beach forest city sky grass snow water space background
red green blue black white yellow orange brown gray grey pink purple golden
big small tall short happy cute old young fluffy striped
high quality detailed realistic cartoon anime style best worst low blurry
""".split()

# Deliberately *not* whole tokens, so that multi-token lookups get exercised.
SPLIT_WORDS = ["kitten", "spacesuit", "tabby"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: repeatedly merge the adjacent pair with the lowest rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, None), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        candidates = [(r, i) for r, i in pairs if r is not None]
        if not candidates:
            break
        _, i = min(candidates)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_chars = list(_bytes_to_unicode().values())
    tokens: list[str] = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def add_merge(a: str, b: str) -> None:
        ranks[(a, b)] = len(merges)
        merges.append((a, b))
        if a + b not in tokens:
            tokens.append(a + b)

    for word in WORDS:
        # Merge until the word is one symbol. New merges rank last, so words that are already
        # single tokens never change: BPE only merges inside a word.
        while len(pieces := _apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
            add_merge(pieces[0], pieces[1])
    for word in SPLIT_WORDS:
        # Two tokens: a prefix and the rest, each built left to right.
        half = len(word) // 2
        for part, end in ((word[:half], ""), (word[half:], "</w>")):
            symbols = list(part[:-1]) + [part[-1] + end]
            while len(pieces := _apply_merges(symbols, ranks)) > 1:
                add_merge(pieces[0], pieces[1])
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer_files(folder: Path, pad_token: str = EOS) -> dict[str, int]:
    """Write vocab.json, merges.txt and the tokenizer config; return the vocabulary.

    ``pad_token``: SD 1.x pads with the end token; SD 2.x and SDXL's second tokenizer pad with "!".
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return vocab
