"""Reproducible speed/memory comparisons of the engine against the published MasaCtrl schedule.

Run from the repository root, e.g. ``python -m benchmarks.frames --model tiny``; see
``benchmarks/README.md`` for the command lines and ``benchmarks/RESULTS.md`` for recorded numbers.
"""
