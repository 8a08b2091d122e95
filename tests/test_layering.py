"""Imports only go down (docs/ARCHITECTURE.md): every import statement in vpt/ (module level or inside a
function) is read with ``ast`` and checked against the layer table. The library never imports the CLI
(vpt.cli, vpt.commands) nor the package root; the engine imports no task and no model code."""
import ast
import os

import pytest

VPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vpt")

# bottom to top; a module may import its own layer and the layers below it (docs/ARCHITECTURE.md, "Layers")
LAYERS = [
    {"errors", "version", "io", "fonts", "recipes"},  # leaves: exceptions, version, atomic writes, fonts, recipes
    {"registry"},  # name -> factory maps
    {"config"},  # typed configs (option / Checked / OneOf)
    {"schema"},  # what an adapter_config.json may say: data, never code
    {"data", "backbones", "heads", "metrics", "engine"},  # no model code: the engine imports no task or model
    {"weights", "prompts", "methods", "encode", "timm_api", "zeroshot", "artifact", "hub", "peft_format"},
    {"model", "hub_push"},  # PromptedModel: adapter + prompts + head; pushing a task (reads artifacts)
    {"clip", "lora", "peft_model", "multitask", "detection"},  # models built on PromptedModel
    {"tasks"},  # what is learned, for the engine
    {"sweep", "serve"},  # the experiment runner and the server: nothing below imports them
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


def _module_graph():
    """vpt module -> the vpt modules it imports (module level and inside functions), each import resolved to
    the module file it loads (``from vpt.detection.model import X`` -> vpt.detection.model)."""
    modules = set()
    for dirpath, _, files in os.walk(VPT):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(VPT))[:-3].replace(os.sep, ".")
                modules.add(rel[:-len(".__init__")] if rel.endswith(".__init__") else rel)

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {m: set() for m in modules}
    for m, t, _ in _imports():
        target = resolve(t)
        if target and target != m:
            graph[m].add(target)
    return graph


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    """Module- and function-level imports alike: a cycle hidden inside a function still ties two modules
    together (neither can be understood, tested or moved alone)."""
    cycles = _cycles(_module_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_architecture_lists_every_module():
    """docs/ARCHITECTURE.md names every module file of the package (vpt/x.py, vpt/x/y.py)."""
    doc = open(os.path.join(os.path.dirname(VPT), "docs", "ARCHITECTURE.md"), encoding="utf-8").read()
    missing = sorted(m for m in _module_graph() if m != "vpt"
                     and f"{m.replace('.', '/')}{'/' if os.path.isdir(os.path.join(os.path.dirname(VPT), *m.split('.'))) else '.py'}" not in doc)
    assert not missing, "add these modules to docs/ARCHITECTURE.md's module list: " + ", ".join(missing)


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
    outside it imports it but the commands that start it (vpt/commands/sweep*.py, and vpt/commands/suite.py: the
    benchmark suites run on it)."""
    bad = [f"{m} (line {n}) imports {t}" for m, t, n in _imports()
           if _part(t) == "sweep" and _part(m) != "sweep"
           and not (m.startswith(("vpt.commands.sweep", "vpt.commands.suite")))]
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
