"""Imports only go down (docs/ARCHITECTURE.md): every import statement in vpt/ (module level or inside a
function) is read with ``ast`` and checked against the layer table. The library never imports the CLI
(vpt.cli, vpt.commands) nor the package root; the engine imports no task and no model code."""
import ast
import os

import pytest

VPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vpt")

# bottom to top; a module may import its own layer and the layers below it
LAYERS = [
    {"errors", "version", "io", "registry", "config", "fonts"},
    {"data", "backbones", "heads", "metrics"},
    {"prompts", "methods"},
    {"model", "encode", "timm_api", "artifact", "schema", "multitask", "clip", "lora", "peft_model", "zeroshot", "weights",
     "detection"},
    {"engine"},
    {"tasks"},
    {"sweep"},
    {"commands", "cli", "__main__", "<root>"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _part(module: str) -> str:
    """vpt.engine.trainer -> 'engine'; vpt -> '<root>'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _imports():
    """(importing module, imported vpt module, line) for every import in vpt/."""
    for dirpath, _, files in os.walk(VPT):
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, os.path.dirname(VPT))[:-3].replace(os.sep, ".")
            module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
            package = module if f == "__init__.py" else module.rsplit(".", 1)[0]
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    if node.level:
                        base = package.split(".")[:len(package.split(".")) - node.level + 1]
                        target = ".".join(base + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    # `from .. import x` may name a submodule: count it as that submodule
                    targets = ([target] if node.module else
                               [f"{target}.{a.name}" if os.path.exists(os.path.join(
                                   os.path.dirname(VPT), *f"{target}.{a.name}".split("."))) or os.path.exists(
                                   os.path.join(os.path.dirname(VPT), *f"{target}.{a.name}".split(".")) + ".py")
                                else target for a in node.names])
                else:
                    continue
                for t in targets:
                    if t == "vpt" or t.startswith("vpt."):
                        yield module, t, node.lineno


def test_every_part_of_vpt_has_a_layer():
    parts = {_part(m) for m, _, _ in _imports()} | {_part(t) for _, t, _ in _imports()}
    assert parts <= set(LAYER), f"add {sorted(parts - set(LAYER))} to LAYERS (and to docs/ARCHITECTURE.md)"


def test_imports_only_go_down():
    bad = [f"{m} (line {n}) imports {t}" for m, t, n in _imports()
           if LAYER[_part(t)] > LAYER[_part(m)]]
    assert not bad, "imports that point up:\n" + "\n".join(bad)


@pytest.mark.parametrize("rule,lower,upper", [
    ("the library never imports the CLI", None, {"cli", "commands"}),
    ("nothing below the CLI imports the package root", None, {"<root>"}),
    ("backbones don't import the shipped weights", {"backbones"}, {"weights"}),
    ("the engine imports no task and no model code", {"engine"},
     {"tasks", "detection", "model", "clip", "lora", "multitask", "data", "backbones", "prompts", "heads"}),
    ("detection and the tasks don't import the CLI", {"detection", "tasks"}, {"commands", "cli"}),
])
def test_named_rules(rule, lower, upper):
    top = {"commands", "cli", "__main__", "<root>"}
    bad = [f"{m} (line {n}) imports {t}" for m, t, n in _imports()
           if (_part(m) in lower if lower else _part(m) not in top) and _part(t) in upper]
    assert not bad, f"{rule}:\n" + "\n".join(bad)


def test_the_checker_sees_imports_inside_functions():
    found = {(m, t) for m, t, _ in _imports()}
    assert ("vpt.cli", "vpt.version") in found  # `from .version import __version__` inside build_parser()


def test_only_the_sweep_command_imports_the_sweep_runner():
    """vpt.sweep (the experiment runner, the ``[sweep]`` extra) sits on the library's public hooks: no module
    outside it imports it but the commands that start it (vpt/commands/sweep*.py)."""
    bad = [f"{m} (line {n}) imports {t}" for m, t, n in _imports()
           if _part(t) == "sweep" and _part(m) != "sweep"
           and not (m.startswith("vpt.commands.sweep"))]
    assert not bad, "the sweep runner is imported from outside it:\n" + "\n".join(bad)


@pytest.mark.parametrize("where", ["model.py", "encode.py", "engine"])
def test_the_core_does_not_mention_the_sweep_runner(where):
    """No parameter, branch or doc of the model, the block loop or the engine exists for sweeps only: their
    hooks are general (one batch under K prompt sets, a task that watches divergence itself)."""
    path = os.path.join(VPT, where)
    files = [path] if path.endswith(".py") else [os.path.join(path, f) for f in sorted(os.listdir(path))
                                                  if f.endswith(".py")]
    bad = [f"{os.path.relpath(f, VPT)}:{i}: {line.strip()}" for f in files
           for i, line in enumerate(open(f, encoding="utf-8"), 1) if "sweep" in line.lower()]
    assert not bad, "the core mentions the sweep runner:\n" + "\n".join(bad)
