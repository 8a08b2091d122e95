"""Small pieces every task uses: autocast for an AMP dtype name, the memory format, parameter counts."""
from __future__ import annotations

import contextlib

import torch


def amp_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: torch.device, dtype_name: str):
    """torch.autocast for bf16 / fp16; a no-op context for float32."""
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype(dtype_name))


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` (NHWC) or the default contiguous (NCHW) layout."""
    return torch.channels_last if channels_last else torch.contiguous_format


def count_parameters(model: torch.nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(total, 1)}
