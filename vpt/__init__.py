"""vpt: visual prompt tuning for frozen timm and open_clip backbones.

The public names below load on first use (PEP 562), so ``import vpt`` and the ``vpt`` command's help and
argument errors don't pay for importing torch, torchvision and timm (seconds); ``from vpt import
create_model`` and ``vpt.create_model`` work as before. The registries (``vpt.registry``) name the module
of every built-in entry, so no lookup depends on what happened to be imported first.
"""
import importlib as _importlib
import importlib.util as _importlib_util
import os as _os
from typing import TYPE_CHECKING

_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .errors import ArtifactError, BackboneError, ConfigError, DataError, VptError  # noqa: E402
from .version import __version__  # noqa: E402

# public name -> the module that defines it (imported when the name is first read)
_LAZY = {
    "Artifact": ".artifact", "from_pretrained": ".artifact",
    "BackboneConfig": ".backbones", "create_backbone": ".backbones",
    "HeadConfig": ".heads",
    "PromptedModel": ".model", "create_model": ".model",
    "MultiTaskModel": ".multitask",
    "ShallowPromptConfig": ".prompts", "DeepPromptConfig": ".prompts", "PrefixPromptConfig": ".prompts",
    "PadPromptConfig": ".prompts", "PatchPromptConfig": ".prompts",
}

__all__ = ["__version__", "Artifact", "create_model", "from_pretrained", "create_backbone", "PromptedModel", "MultiTaskModel",
           "BackboneConfig", "HeadConfig", "ShallowPromptConfig", "DeepPromptConfig", "PrefixPromptConfig",
           "PadPromptConfig", "PatchPromptConfig", "ArtifactError", "BackboneError", "ConfigError", "DataError",
           "VptError"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        # a direct submodule of this package only (`import vpt; vpt.data.X`, as after `import vpt.data`): an
        # identifier, so getattr(vpt, "a.b") cannot reach deeper modules
        if (name.isidentifier() and not name.startswith("_")
                and _importlib_util.find_spec(f"{__name__}.{name}") is not None):
            return _importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'vpt' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value  # later reads are plain attribute lookups
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .artifact import Artifact, from_pretrained  # noqa: F401
    from .backbones import BackboneConfig, create_backbone  # noqa: F401
    from .heads import HeadConfig  # noqa: F401
    from .model import PromptedModel, create_model  # noqa: F401
    from .multitask import MultiTaskModel  # noqa: F401
    from .prompts import (DeepPromptConfig, PadPromptConfig, PatchPromptConfig, PrefixPromptConfig,  # noqa: F401
                          ShallowPromptConfig)
