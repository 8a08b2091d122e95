"""Prompt kinds; importing this package registers every built-in kind."""
from .base import PromptModule, build_prompt, prompt_to_dict, resolve_prompt_config
from .pixel import PadPromptConfig, PatchPromptConfig
from .prefix import PrefixPromptConfig
from .tokens import DeepPromptConfig, ShallowPromptConfig

__all__ = ["PromptModule", "build_prompt", "prompt_to_dict", "resolve_prompt_config", "ShallowPromptConfig",
           "DeepPromptConfig", "PrefixPromptConfig", "PadPromptConfig", "PatchPromptConfig"]
