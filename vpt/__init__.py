"""vpt: visual prompt tuning for frozen timm and open_clip backbones."""
import os as _os

_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .version import __version__  # noqa: E402

from .artifact import from_pretrained  # noqa: E402
from .backbones import BackboneConfig, create_backbone  # noqa: E402
from .errors import ArtifactError, BackboneError, ConfigError, DataError, VptError  # noqa: E402
from .heads import HeadConfig  # noqa: E402
from .model import PromptedModel, create_model  # noqa: E402
from .multitask import MultiTaskModel  # noqa: E402
from .prompts import (DeepPromptConfig, PadPromptConfig, PatchPromptConfig, PrefixPromptConfig,  # noqa: E402
                      ShallowPromptConfig)

__all__ = ["__version__", "create_model", "from_pretrained", "create_backbone", "PromptedModel", "MultiTaskModel", "BackboneConfig",
           "HeadConfig", "ShallowPromptConfig", "DeepPromptConfig", "PrefixPromptConfig", "PadPromptConfig",
           "PatchPromptConfig", "ArtifactError", "BackboneError", "ConfigError", "DataError", "VptError"]
