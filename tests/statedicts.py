"""Test helper: the floating-point tensors of a nested state dict (a family's, a checkpoint's)."""
import torch


def float_tensors(obj, prefix=""):
    """(path, tensor) for every floating-point tensor in a nested state dict."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from float_tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from float_tensors(v, f"{prefix}[{i}]")
