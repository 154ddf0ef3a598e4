"""How many bytes of tensors an object keeps alive (for cache budgets)."""

from __future__ import annotations

import dataclasses

import torch


def tensor_bytes(obj, _seen: set[int] | None = None) -> int:
    """Bytes of the tensors reachable from ``obj`` through containers, dataclasses and plain
    attributes; modules (the model weights, which are not a cache) and shared storage counted once."""
    seen = set() if _seen is None else _seen
    if id(obj) in seen or isinstance(obj, (torch.nn.Module, str, bytes, int, float, bool, type(None))):
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(k, seen) + tensor_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(tensor_bytes(v, seen) for v in obj)
    if dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__"):
        return sum(tensor_bytes(v, seen) for v in vars(obj).values())
    return 0
