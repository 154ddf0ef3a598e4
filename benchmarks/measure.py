"""Timing, peak memory and exact UNet-sample counting shared by the benchmark scripts.

Peak memory is the peak *above* what was resident when the measurement started (the weights are
already loaded then), so it is the working memory of the measured job:
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensor memory only).
- CPU: the process's resident-set high-water mark (``VmHWM``), reset through
  ``/proc/self/clear_refs`` (Linux >= 4.0) after ``malloc_trim`` gives freed heap back. This counts
  every byte the process touches (allocator slack included), page-granular; it is reported as
  "n/a" where the reset is not possible.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import os
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

MIB = 2**20


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_bytes: int | None = None  # above the memory in use when the measurement started


@contextmanager
def measured(device: torch.device):
    """Wall time (synchronised on CUDA) and peak extra memory of the enclosed block."""
    device = torch.device(device)
    result = Measurement()
    _trim_heap()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        resettable = _reset_cpu_peak()
        base = (_status_kib("VmRSS") or 0) * 1024 if resettable else None
    start = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.seconds = time.perf_counter() - start
        if device.type == "cuda":
            result.peak_bytes = torch.cuda.max_memory_allocated(device) - base
        elif base is not None:
            result.peak_bytes = max(0, (_status_kib("VmHWM") or 0) * 1024 - base)


def resident_bytes(device: torch.device) -> int | None:
    """Memory in use now: allocated CUDA tensors, or the process's resident set on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:.0f}"


def median(values) -> float:
    return statistics.median(values)


class UNetCounter:
    """Counts forward calls and samples (batch rows) of a module with a forward pre-hook, under
    the label currently set with ``phase(...)``; exact, independent of any engine bookkeeping."""

    def __init__(self, module: torch.nn.Module):
        self.calls: dict[str, int] = {}
        self.samples: dict[str, int] = {}
        self.label = "other"
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("input_ids"))
        self.calls[self.label] = self.calls.get(self.label, 0) + 1
        self.samples[self.label] = self.samples.get(self.label, 0) + int(sample.shape[0])

    @contextmanager
    def phase(self, label: str):
        previous, self.label = self.label, label
        try:
            yield
        finally:
            self.label = previous

    def reset(self) -> None:
        self.calls.clear()
        self.samples.clear()

    def total_calls(self) -> int:
        return sum(self.calls.values())

    def total_samples(self) -> int:
        return sum(self.samples.values())

    def remove(self) -> None:
        self._handle.remove()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        where = f"GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        where = f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average %.2f %.2f %.2f" % os.getloadavg()
    return (f"{where}; torch {torch.__version__}; python {platform.python_version()}; "
            f"{datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}{load}")


def parse_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
              "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in dtypes:
        raise SystemExit(f"--dtype: {name!r} is not one of {sorted(dtypes)}")
    return dtypes[name]


def check_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch on this machine")
    return device


@dataclass
class Timer:
    """Named phases timed one after another inside one measured job."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
