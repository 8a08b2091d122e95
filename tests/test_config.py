"""Typed configs validated once (issue #32): a recipe resolves to the kinds' dataclasses when it is loaded, so
a typo or an out-of-range value is refused before any run folder or model exists; registries name each kind
once; the artifact schema imports nothing above registry / errors / config."""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

from vpt.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recipe(tmp_path, prompt: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(f"""\
        task: classification
        model:
          backbone: {{name: "timm:vit_tiny_patch16_224", pretrained: false,
                     model_kwargs: {{img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}}}}
          prompt: {prompt}
        train: {{epochs: 1, batch_size: 2, device: cpu, workers: 0}}
        """))
    return str(path)


def _folder(tmp_path):
    from PIL import Image
    for c in ("a", "b"):
        os.makedirs(tmp_path / "data" / c)
        for i in range(3):
            Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / "data" / c / f"{i}.png")
    return str(tmp_path / "data")


@pytest.mark.parametrize("prompt, match", [
    ("{kind: vpt_deep, num_tokns: 4}", r"unknown config key 'model\.prompt\.num_tokns'.*did you mean 'num_tokens'"),
    ("{kind: vpt_deep, num_tokens: -1}", r"model\.prompt\.num_tokens must be in \[0, 4096\], got -1"),
    ("{kind: vpt_depp}", r"model\.prompt\.kind: unknown prompt kind 'vpt_depp'.*did you mean 'vpt_deep'"),
    ("{kind: coop}", r"model\.prompt\.kind: prompt kind 'coop' is a CLIP text prompt"),
    ("{kind: vpt_deep, layers: [1], last_k: 1}", r"model\.prompt\.last_k and layers are both set"),
])
def test_resolve_config_types_the_prompt_when_the_recipe_loads(tmp_path, prompt, match):
    from vpt.commands._common import resolve_config
    from vpt.tasks.classification import RunConfig
    with pytest.raises(ConfigError, match=match):
        resolve_config(RunConfig, _recipe(tmp_path, prompt), {}, None)


@pytest.mark.parametrize("prompt, match", [
    ("{kind: vpt_deep, num_tokns: 4}", "did you mean 'num_tokens'"),
    ("{kind: vpt_deep, num_tokens: -1}", r"model.prompt.num_tokens must be in \[0, 4096\]"),
])
def test_train_refuses_a_bad_prompt_before_the_run_folder_exists(tmp_path, capsys, prompt, match):
    import re
    from vpt.cli import main
    out = tmp_path / "run"
    code = main(["train", "-c", _recipe(tmp_path, prompt), "--data", _folder(tmp_path), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and re.search(match, err), err
    assert not out.exists()


def test_recipe_sections_are_typed_and_round_trip():
    from vpt.clip import ClipHeadConfig
    from vpt.config import from_dict, to_dict
    from vpt.heads import HeadConfig
    from vpt.lora import LoraConfig
    from vpt.prompts import DeepPromptConfig
    from vpt.prompts.maple import MapleConfig
    from vpt.tasks.classification import RunConfig
    cfg = from_dict(RunConfig, {"model": {"prompt": {"kind": "vpt_deep", "num_tokens": 4}, "head": "mlp"}})
    assert isinstance(cfg.model.prompt, DeepPromptConfig) and cfg.model.prompt.num_tokens == 4
    assert isinstance(cfg.model.head, HeadConfig) and cfg.model.head.kind == "mlp"
    again = from_dict(RunConfig, to_dict(cfg))  # what a run folder's config.yaml holds resolves back
    assert again == cfg and to_dict(cfg)["model"]["prompt"]["kind"] == "vpt_deep"
    clip = from_dict(RunConfig, {"model": {"type": "clip", "text": {"kind": "maple", "depth": 2}}})
    assert isinstance(clip.model.head, ClipHeadConfig) and isinstance(clip.model.text, MapleConfig)
    assert clip.model.head.kind == "linear"  # task classification's default head, typed for a clip model
    lora = from_dict(RunConfig, {"model": {"type": "lora", "lora": {"r": 4}}})
    assert isinstance(lora.model.lora, LoraConfig) and lora.model.lora.r == 4
    for bad, match in (({"type": "clip", "head": {"kind": "mpl"}}, r"model\.head\.kind must be one of 'zeroshot'"),
                       ({"head": {"kind": "mpl"}}, r"model\.head\.kind: unknown head kind 'mpl'.*did you mean 'mlp'"),
                       ({"text": {"kind": "coop"}}, r"model\.text is not used by model.type 'classifier'"),
                       ({"type": "lora", "lora": {"r": 0}}, r"model\.lora\.r must be in \[1, 4096\], got 0"),
                       ({"type": "clip", "text": {"kind": "vpt_deep"}}, r"model\.text\.kind: prompt kind 'vpt_deep' "
                                                                        r"prompts the image encoder")):
        with pytest.raises(ConfigError, match=match):
            from_dict(RunConfig, {"model": bad})


def test_python_api_takes_a_name_dict_or_config():
    import vpt
    from vpt.prompts import DeepPromptConfig
    kw = dict(pretrained=False, model_kwargs=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))
    for prompt in ("vpt_deep", {"kind": "vpt_deep", "num_tokens": 3}, DeepPromptConfig(num_tokens=3)):
        m = vpt.create_model("timm:vit_tiny_patch16_224", prompt=prompt, num_classes=2, **kw)
        assert m.prompt.kind == "vpt_deep" and m.prompt_config.kind == "vpt_deep"
    with pytest.raises(ConfigError, match=r"num_tokens must be in \[0, 4096\], got -2"):
        DeepPromptConfig(num_tokens=-2)  # a config checks itself however it is made


def test_schema_imports_nothing_above_registry_errors_config():
    tree = ast.parse(open(os.path.join(REPO, "vpt", "schema.py")).read())
    own = set()
    for node in ast.walk(tree):  # module- and function-level imports alike
        if isinstance(node, ast.ImportFrom) and node.level:
            own.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vpt"):
            own.add(node.module.split(".", 1)[-1])
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("vpt") for a in node.names), ast.dump(node)
    assert own <= {"errors", "registry", "config"}, own


def test_a_prompt_kind_name_is_written_once():
    """The registration decorator is the one place: no ClassVar, no `m.kind = ...`, no lazy map."""
    import re
    from vpt.registry import PROMPTS
    sources = {}
    for folder, _, files in os.walk(os.path.join(REPO, "vpt")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                sources[os.path.relpath(path, REPO)] = open(path, encoding="utf-8").read()
    def code_strings(text):  # string literals outside docstrings
        tree = ast.parse(text)
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and id(n) not in docs]

    strings = {p: code_strings(s) for p, s in sources.items()
               if p.startswith(os.path.join("vpt", "prompts")) or p == os.path.join("vpt", "registry.py")}
    for name in PROMPTS.names():
        where = {p: found.count(name) for p, found in strings.items() if name in found}
        assert sum(where.values()) == 1, (name, where)


def test_registry_lookup_in_a_fresh_process_after_importing_artifact():
    probe = ("import vpt.artifact\nfrom vpt.registry import PROMPTS, HEADS\n"
             "assert 'vpt_deep' in PROMPTS and PROMPTS.get('maple').config_cls.kind == 'maple'\n"
             "assert {e.name for e in HEADS} == {'linear', 'mlp'}\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": REPO},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_registry_refuses_duplicates_and_lists_unavailable_modules(tmp_path, monkeypatch):
    from vpt.registry import Registry
    pkg = tmp_path / "vpt_probe_kinds"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text("from vpt_probe_registry import REG\nREG.register('good')(object)\n")
    (pkg / "needs_dep.py").write_text("import some_missing_dependency_xyz\n")
    (tmp_path / "vpt_probe_registry.py").write_text(
        "from vpt.registry import Registry\nREG = Registry('probe kind', package='vpt_probe_kinds')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from vpt_probe_registry import REG
    assert REG.names() == ["good"]
    [missing] = REG.unavailable()
    assert missing.module == "vpt_probe_kinds.needs_dep" and missing.fix == "pip install some_missing_dependency_xyz"
    with pytest.raises(KeyError, match=r"unknown probe kind 'god'.*did you mean 'good'.*pip install some_missing"):
        REG.get("god")
    with pytest.raises(ValueError, match="'good' is already registered"):
        REG.register("good")(object)
    lazy = Registry("probe type", lazy={"needy": "vpt_probe_kinds.needs_dep"})
    with pytest.raises(ImportError, match=r"probe type 'needy' needs 'some_missing_dependency_xyz'.*pip install"):
        lazy.get("needy")
    assert lazy.names() == [] and "needy" not in lazy
    reg = Registry("thing")
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("Bad-Name")


def test_vpt_list_shows_each_kinds_fields_with_help(capsys):
    from vpt.cli import main
    assert main(["list", "prompts"]) == 0
    out = capsys.readouterr().out
    assert "vpt_deep" in out and "P prompt tokens per prompted block (in [0, 4096])" in out
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "clip" in out and "text" in out and "lora" in out


@pytest.mark.parametrize("setting, match", [
    ("optim.momentum=1.5", r"optim\.momentum must be in \[0, 1\), got 1\.5"),
    ("data.classes=bse", r"data\.classes must be one of 'all', 'base', 'novel', got 'bse'; did you mean 'base'"),
    ("model.head.kind=mpl", r"model\.head\.kind: unknown head kind 'mpl'.*did you mean 'mlp'"),
])
def test_train_refuses_a_bad_section_before_the_run_folder_exists(tmp_path, capsys, setting, match):
    import re
    from vpt.cli import main
    out = tmp_path / "run"
    code = main(["train", "-c", _recipe(tmp_path, "null"), "--data", _folder(tmp_path), "--output", str(out),
                 "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and re.search(match, err), err
    assert not out.exists()


def _artifact_config(**changes):
    from vpt.schema import FORMAT, FORMAT_VERSION
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": "classifier",
              "backbone": {"name": "timm:vit_tiny_patch16_224", "pretrained": False},
              "prompt": {"kind": "vpt_deep", "num_tokens": 2, "layers": [0, 1]},
              "head": {"kind": "linear"}, "num_classes": 2, "class_names": ["a", "b"]}
    config.update(changes)
    return config


def test_artifact_bounds_come_from_each_kinds_declaration():
    """A bound belongs to a kind's field, not to a bare name: a prompt's `layers` are block indices (>= 0)
    while a detector pyramid's `blocks` count back from the end (-1: the last)."""
    from vpt.errors import ArtifactError
    from vpt.schema import check_config
    check_config(_artifact_config())
    with pytest.raises(ArtifactError, match=r"prompt\.layers\[0\] = -1 is outside the allowed range \[0, 4095\]"):
        check_config(_artifact_config(prompt={"kind": "vpt_deep", "layers": [-1]}))
    with pytest.raises(ArtifactError, match=r"prompt.num_tokens = 5000 is outside the allowed range \[0, 4096\]"):
        check_config(_artifact_config(prompt={"kind": "vpt_deep", "num_tokens": 5000}))
    with pytest.raises(ArtifactError, match=r"adapter_config\.head\.num_layers = 100 is outside the allowed range"):
        check_config(_artifact_config(head={"kind": "mlp", "num_layers": 100}))
    with pytest.raises(ArtifactError, match=r"last_k and layers are both set"):  # the dataclass's own check runs
        check_config(_artifact_config(prompt={"kind": "vpt_deep", "layers": [0], "last_k": 1}))
    with pytest.raises(ArtifactError, match=r"prompt\.kind 'coop' does not belong in 'adapter_config\.prompt': it is a "
                                            r"CLIP text prompt"):
        check_config(_artifact_config(prompt={"kind": "coop"}))
    det = _artifact_config(model_type="detection", detector={"kind": "fcos", "pyramid": {"blocks": [-1, -1, -1, -1]}},
                           label_offset=0)
    del det["head"]
    check_config(det)
    with pytest.raises(ArtifactError, match=r"detector\.kind: unknown detector kind 'yolo'"):
        check_config({**det, "detector": {"kind": "yolo"}})


def test_the_corrected_recipe_runs_in_the_same_output_folder(tmp_path, capsys):
    """The issue's scenario: a typo used to fail after the run folder was claimed, so the fixed command was
    refused ('already holds a run'). Now the typo touches nothing and the fixed command trains."""
    from vpt.cli import main
    out, data = tmp_path / "run", _folder(tmp_path)
    assert main(["train", "-c", _recipe(tmp_path, "{kind: vpt_deep, num_tokns: 2}"), "--data", data,
                 "--output", str(out)]) == 2
    assert not out.exists()
    assert main(["train", "-c", _recipe(tmp_path, "{kind: vpt_deep, num_tokens: 2}"), "--data", data,
                 "--output", str(out)]) == 0, capsys.readouterr().err
    assert (out / "best" / "adapter_config.json").is_file()
