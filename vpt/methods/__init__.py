"""Vision PEFT methods peft lacks: one module per method, each registering its config with one
``@METHODS.register`` line (``vpt.registry.METHODS`` imports every module here on its first lookup).

A method changes the frozen backbone by wrapping its submodules (a wrapper calls the original module, as
peft's layers do; timm's Block / Attention are never forked), so the model's one block loop, prompts,
``forward_intermediates`` and FX tracing run through it unchanged. Recipe: ``model.method: {kind: ssf}``
(``vpt list`` shows every method)."""
from .base import MethodModule, build_method

__all__ = ["MethodModule", "build_method"]
