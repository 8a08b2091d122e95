"""Recipes that ship inside the package, found by name from any folder: ``vpt train -c tiny_offline``.

Each recipe is a YAML file in this folder whose first comment says what it is (``vpt list recipes`` prints
that line). ``-c`` takes a recipe name (with or without ``.yaml``) or a path to any YAML file; a path that
exists wins over a name. The embedded default of ``vpt train`` is :data:`DEFAULT`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = "vpt_deep_vit_tiny_cifar10"  # VPT-deep on the shipped vpt:vit_tiny_cifar10: offline, minutes on a CPU


def names() -> List[str]:
    """The packaged recipes, sorted."""
    return sorted(f[:-5] for f in os.listdir(HERE) if f.endswith(".yaml") and not f.startswith("."))


def _bare(spec: str) -> Optional[str]:
    """``spec`` as a recipe name (``tiny_offline`` / ``tiny_offline.yaml``), or None when it is a path."""
    if not spec or os.sep in spec or (os.altsep and os.altsep in spec):
        return None
    return spec[:-5] if spec.endswith(".yaml") else spec


def find(spec: str) -> Optional[str]:
    """The file ``-c SPEC`` means: an existing file as given, else the packaged recipe of that name, else None."""
    if os.path.isfile(spec):
        return spec
    name = _bare(spec)
    if name is not None and name in names():
        return os.path.join(HERE, name + ".yaml")
    return None


def path(name: str) -> str:
    """The packaged recipe file of ``name`` (KeyError naming the recipes there are)."""
    found = find(name) if _bare(name) is not None else None
    if found is None or os.path.dirname(os.path.abspath(found)) != HERE:
        raise KeyError(f"no packaged recipe {name!r}; available: {', '.join(names())}")
    return found


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    task: str  # the recipe's task (classification / detection), or 'zeroshot' for `vpt zeroshot` recipes
    description: str  # the first line of the recipe's first comment
    path: str


def describe(name: str) -> RecipeInfo:
    """Name, task and one-line description of a packaged recipe, read from its YAML (no config is built)."""
    import yaml
    file = path(name)
    with open(file, encoding="utf-8") as f:
        text = f.read()
    lines = []
    for line in text.splitlines():  # the leading comment, up to its first blank or indented (command) line
        if not line.startswith("#") or not line.lstrip("#").strip() or line.startswith("#  "):
            break
        lines.append(line.lstrip("#").strip())
    description = _first_sentence(" ".join(lines))
    data = yaml.safe_load(text) or {}
    task = data.get("task") or ("zeroshot" if "templates" in data else "classification")
    return RecipeInfo(name=name, task=str(task), description=description, path=file)


def _first_sentence(text: str, limit: int = 110) -> str:
    """The text's first sentence, cut at a word boundary to ``limit`` characters."""
    import re
    end = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\. (?=[A-Z])", text)  # not "et al." / "e.g." / "i.e."
    text = text[:end.start() + 1] if end else text
    if len(text) <= limit:
        return text
    return text[:limit - 3].rsplit(" ", 1)[0].rstrip(",;:(.") + "..."
