"""Test helper: the tensors of a nested state dict (a family's, a checkpoint's), by path."""
import torch


def state_tensors(obj, prefix="", floating_only=True):
    """(path, tensor) for every tensor in a nested state dict (only floating-point ones by default:
    the weights and moments, not counters or RNG states)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or not floating_only:
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from state_tensors(v, f"{prefix}.{k}", floating_only)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from state_tensors(v, f"{prefix}[{i}]", floating_only)
