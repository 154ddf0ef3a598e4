"""Attention benchmark: the engine's mutual-attention processor (SDPA) against explicit softmax(QK^T)V.

One controlled self-attention layer of SD 1.5's finest level (64x64 tokens for a 512x512 image,
320 channels, 8 heads of 40), frames' queries over the source's keys/values, for 1 source + F
frames under CFG: the queries are the 2F frame rows (unconditional | conditional), the source's
keys/values (its unconditional and conditional rows) were recorded by the source pass, so both
variants get them precomputed and do the same work:

- sdpa: ``MutualSelfAttention`` as the engine installs it (q projection, one
  ``scaled_dot_product_attention`` per call with the frames folded into the token axis, output
  projection);
- explicit: the published ``attn_batch`` (same projections, then per CFG half
  ``sim = einsum(q, k) * scale; softmax; einsum(attn, v)``), which materialises a
  ``heads x (F * tokens) x tokens`` matrix per half.

Time is the median over repeats; peak memory is above what was resident before the call (see
``benchmarks/measure.py``). The outputs are compared, so both are known to compute the same thing.

    python -m benchmarks.attention                        # 512x512 level 64x64, 8 frames, CPU fp32
    python -m benchmarks.attention --quick                # what CI runs
    python -m benchmarks.attention --device cuda --dtype float16
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

from .measure import check_device, machine_line, measured, median, mib, parse_dtype


class ExplicitMutualAttention:
    """The published ``MutualSelfAttentionControl.attn_batch`` on the frames' rows, per CFG half."""

    def __init__(self, source_kv):
        self.k_src, self.v_src = source_kv  # (2, heads, tokens, d): [uncond source, cond source]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, masactrl=None):
        rows, tokens, _ = hidden_states.shape
        heads = attn.heads
        q = attn.to_q(hidden_states).view(rows, tokens, heads, -1).permute(2, 0, 1, 3)  # (h, rows, n, d)
        outs = []
        for half, qh in enumerate(q.chunk(2, dim=1)):
            frames = qh.shape[1]
            qh = qh.reshape(heads, frames * tokens, -1)  # "(b h) n d -> h (b n) d"
            sim = torch.einsum("hid,hjd->hij", qh, self.k_src[half]) * attn.scale
            probs = sim.softmax(-1)
            out = torch.einsum("hij,hjd->hid", probs, self.v_src[half])
            outs.append(out.view(heads, frames, tokens, -1))
            del sim, probs
        out = torch.cat(outs, dim=1).permute(1, 2, 0, 3).reshape(rows, tokens, -1)  # "h (b n) d -> b n (h d)"
        return attn.to_out[1](attn.to_out[0](out))


def build(tokens_side: int, frames: int, channels: int, heads: int, device, dtype, seed: int = 0):
    from diffusers.models.attention_processor import Attention

    from masactrl_engine.attention import CallContext, MutualSelfAttention, _keys_values

    torch.manual_seed(seed)
    attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, bias=False, out_bias=True)
    attn = attn.to(device, dtype).eval()
    tokens = tokens_side * tokens_side
    hidden = torch.randn(2 * frames, tokens, channels, device=device, dtype=dtype)
    source = torch.randn(2, tokens, channels, device=device, dtype=dtype)
    with torch.no_grad():
        k_src, v_src = _keys_values(attn, source)
    ours = MutualSelfAttention(0, {(0, 0): (k_src, v_src)})
    explicit = ExplicitMutualAttention((k_src, v_src))
    return attn, hidden, {"sdpa": (ours, CallContext(step=0)), "explicit": (explicit, None)}


def run(args) -> dict:
    device = check_device(args.device)
    dtype = parse_dtype(args.dtype or ("float16" if device.type == "cuda" else "float32"))
    side = args.size // 8
    attn, hidden, variants = build(side, args.frames, args.channels, args.heads, device, dtype)
    tokens = side * side
    results, outputs = {}, {}
    with torch.no_grad():
        for name, (processor, ctx) in variants.items():
            processor(attn, hidden, masactrl=ctx)  # warm-up
            runs = []
            for _ in range(args.repeats):
                with measured(device) as m:
                    out = processor(attn, hidden, masactrl=ctx)
                runs.append(m)
                outputs[name] = out.float().cpu()
                del out
                gc.collect()
            peaks = [r.peak_bytes for r in runs if r.peak_bytes is not None]
            results[name] = dict(seconds=median([r.seconds for r in runs]), peak_bytes=max(peaks) if peaks else None)
    difference = float((outputs["sdpa"] - outputs["explicit"]).abs().max())
    element = torch.finfo(dtype).bits // 8
    sim_bytes = args.heads * args.frames * tokens * tokens * element  # one CFG half's QK^T
    return dict(results=results, difference=difference, sim_bytes=sim_bytes, tokens=tokens, dtype=str(dtype),
                device=str(device))


def report(args, r: dict) -> str:
    lines = [
        f"# mutual attention, one layer: image {args.size}x{args.size} -> {args.size // 8}x{args.size // 8} "
        f"= {r['tokens']} tokens, {args.channels} channels, {args.heads} heads, 1 source + {args.frames} frames "
        f"under CFG ({2 * args.frames} query rows), {r['device']} {r['dtype']}, median of {args.repeats}",
        f"# machine: {machine_line(torch.device(r['device']))}",
        f"# explicit QK^T per CFG half: {r['sim_bytes'] / 2**20:.0f} MiB (its softmax as much again)",
        f"{'kernel':<10} {'seconds':>9} {'peak MiB':>9}",
    ]
    for name, x in r["results"].items():
        lines.append(f"{name:<10} {x['seconds']:>9.4f} {mib(x['peak_bytes']):>9}")
    sdpa, explicit = r["results"]["sdpa"], r["results"]["explicit"]
    memory = ("n/a" if not sdpa["peak_bytes"] or explicit["peak_bytes"] is None
              else f"{explicit['peak_bytes'] / sdpa['peak_bytes']:.1f}x")
    lines.append(f"explicit/sdpa: {explicit['seconds'] / sdpa['seconds']:.2f}x time, {memory} peak memory; "
                 f"max |sdpa - explicit| = {r['difference']:.2e}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image side; the layer has (size/8)^2 tokens")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--channels", type=int, default=320, help="SD 1.5's finest level: 320")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="CI size: 128x128 image (16x16 tokens), 2 frames")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.frames, args.repeats = 128, 2, 1
    if args.size % 8 or args.size < 8 or args.frames < 1 or args.repeats < 1 or args.channels % args.heads:
        raise SystemExit("--size must be a multiple of 8, --frames/--repeats >= 1, --channels divisible by --heads")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    print(report(args, result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
