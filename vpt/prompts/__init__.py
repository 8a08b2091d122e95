"""Prompt kinds: one module per kind (or family), each registering its kinds with one ``@PROMPTS.register``
line. ``vpt.registry.PROMPTS`` imports every module of this package on its first lookup, so a lookup never
depends on what was imported before; the names below are the image prompt configs of the public API."""
from .base import PromptModule, build_prompt, prompt_to_dict, resolve_prompt_config
from .pixel import PadPromptConfig, PatchPromptConfig
from .prefix import PrefixPromptConfig
from .tokens import DeepPromptConfig, ShallowPromptConfig

__all__ = ["PromptModule", "build_prompt", "prompt_to_dict", "resolve_prompt_config", "ShallowPromptConfig",
           "DeepPromptConfig", "PrefixPromptConfig", "PadPromptConfig", "PatchPromptConfig"]
