"""Opt-in training speed-ups: the compiled-or-eager choice of ``train.compile`` and ``train.fp8``.

``train.compile: true`` compiles the training forward, then times the compiled and the eager step on the first
batch (forward and backward, gradients discarded, random state and buffers restored, so the run is the run it
would be) and keeps the faster; results.json says which and why (``compile``).

``train.fp8: true`` converts the frozen ``nn.Linear`` layers to torchao's float8 training linears: their forward
and input-gradient matmuls run in FP8 (the weight gradient is never computed for a frozen weight). It needs a GPU
with FP8 matmuls (compute capability 8.9+: Ada, Hopper, Blackwell) and ``pip install 'vpt[fp8]'``; anywhere else
the run is refused before it starts.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

FP8_MIN_CAPABILITY = (8, 9)


def fp8_refusal(device: torch.device) -> Optional[str]:
    """Why ``train.fp8`` cannot run on ``device`` (None: it can)."""
    if device.type != "cuda":
        return (f"train.fp8 needs a CUDA GPU with FP8 matmuls (compute capability "
                f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}+: Ada, Hopper, Blackwell); this run is on {device}; "
                f"set train.fp8: false (or train.device: cuda on such a GPU)")
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) < FP8_MIN_CAPABILITY:
        return (f"train.fp8 needs FP8 matmuls (compute capability {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}+); "
                f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}; set train.fp8: false")
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "train.fp8 needs torchao's float8 training: pip install 'vpt[fp8]' (or set train.fp8: false)"
    return None


def _fp8_linear(module: nn.Module, fqn: str) -> bool:
    """Frozen linears whose sizes the FP8 matmuls take (multiples of 16)."""
    return (isinstance(module, nn.Linear) and not module.weight.requires_grad
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def convert_fp8(model: nn.Module) -> Dict[str, Any]:
    """Frozen linears of ``model`` to torchao's Float8Linear, in place; returns what was converted."""
    from torchao.float8 import convert_to_float8_training
    names = [n for n, m in model.named_modules() if _fp8_linear(m, n)]
    convert_to_float8_training(model, module_filter_fn=_fp8_linear)
    return {"converted_linears": len(names), "recipe": "torchao.float8 tensorwise (dynamic scaling)"}


def choose_compiled(eager_step: Callable[[], None], compiled_step: Callable[[], None], model: nn.Module,
                    device: torch.device, repeats: int = 3) -> Dict[str, Any]:
    """Time ``compiled_step`` (after one warm-up call that compiles) and ``eager_step`` interleaved; the random
    state and the model's buffers are restored afterwards. Returns the choice and its timings."""
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        compile_s = timed(compiled_step)
        eager_step()  # warm (allocator, kernels)
        eager, compiled = [], []
        for _ in range(repeats):
            eager.append(timed(eager_step))
            compiled.append(timed(compiled_step))
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    e, c = statistics.median(eager), statistics.median(compiled)
    use = c < e
    return {"requested": True, "used": use, "eager_step_ms": 1000 * e, "compiled_step_ms": 1000 * c,
            "first_compiled_step_s": compile_s, "repeats": repeats,
            "reason": (f"compiled step {1000 * c:.1f} ms < eager {1000 * e:.1f} ms" if use else
                       f"compiled step {1000 * c:.1f} ms >= eager {1000 * e:.1f} ms: trained eager")}
