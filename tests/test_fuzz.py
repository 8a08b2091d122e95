"""Fuzzing (hypothesis) of everything vpt reads from files people pass around: adapter_config.json, YAML
recipes and data CSVs. Every case must end in success or a vpt error (``VptError``) with a message: no other
exception, no hang (a deadline per case), bounded memory (the peak RSS may not grow by more than 1 GiB).

The CI budget is small and fixed (profile ``ci``). A longer run is ``python benchmarks/fuzz.py``
(profile ``long``: ``VPT_FUZZ_PROFILE=long VPT_FUZZ_EXAMPLES=N``)."""
import copy
import json
import os
import resource
import shutil
import string
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import vpt  # noqa: E402
from vpt.artifact import from_pretrained  # noqa: E402
from vpt.errors import VptError  # noqa: E402

from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder  # noqa: E402

_COMMON = dict(suppress_health_check=list(HealthCheck), derandomize=True, print_blob=True)
settings.register_profile("ci", max_examples=40, deadline=10_000, **_COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("VPT_FUZZ_EXAMPLES", "2000")), deadline=30_000,
                          **{**_COMMON, "derandomize": False})
PROFILE = os.environ.get("VPT_FUZZ_PROFILE", "ci")
MAX_RSS_GROWTH_KB = 1 << 20  # 1 GiB
MAX_PARAMS = 20_000_000  # what a fuzzed artifact may build for real here

pytestmark = pytest.mark.usefixtures("one_thread")


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- values JSON / YAML can hold ----------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                    st.sampled_from(["vpt_deep", "linear", "timm:vit_tiny_patch16_224", "open_clip:ViT-B-32", "../x",
                                     "/dev/zero", "__main__", "os.system", "file:" + "0" * 64, "hub:x", "coop"]))
keys = st.one_of(st.text(max_size=12), st.sampled_from([
    "kind", "num_tokens", "embed_dim", "depth", "img_size", "pretrained_image_path", "checkpoint_path",
    "weights_only", "weights_file", "weights_id", "model_type", "name", "model_kwargs", "layers", "templates",
    "hidden_dim", "num_layers", "class_names", "num_classes", "format_version", "input_size", "mean", "std"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                        st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


@st.composite
def mutations(draw, base: dict):
    """A valid config with a few random edits: set / replace / delete a key anywhere, at any depth."""
    cfg = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        node = cfg
        for _ in range(draw(st.integers(0, 3))):
            children = [k for k, v in node.items() if isinstance(v, dict)] if isinstance(node, dict) else []
            if not children:
                break
            node = node[draw(st.sampled_from(sorted(children)))]
        if not isinstance(node, dict):
            continue
        action = draw(st.sampled_from(["set", "tweak", "tweak", "delete"]))
        leaves = sorted(k for k, v in node.items() if isinstance(v, (bool, int, float, str)))
        if action == "delete" and node:
            node.pop(draw(st.sampled_from(sorted(node))))
        elif action == "tweak" and leaves:  # same type, other value: reaches the model builders
            key = draw(st.sampled_from(leaves))
            old = node[key]
            node[key] = draw(st.booleans() if isinstance(old, bool) else
                             st.integers(-3, 70) if isinstance(old, int) else
                             st.floats(-2, 70, allow_nan=False) if isinstance(old, float) else
                             st.sampled_from(["vpt_shallow", "vpt_deep", "vpt_prefix", "pixel_pad", "pixel_patch",
                                              "coop", "mlp", "linear", "cls", "avg", "lora", "clip", "detection",
                                              "timm:vit_small_patch16_224", "vpt:vit_tiny_cifar10", "normal",
                                              "zeros", old]))
        else:
            key = draw(st.one_of(keys, st.sampled_from(sorted(node) or ["x"])))
            node[key] = draw(values)
    return cfg


# --- adapter_config.json ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_art") / "a"
    m = vpt.create_model(TINY_VIT_NAME, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=2,
                         class_names=["a", "b"], pretrained=False, model_kwargs=dict(TINY_VIT))
    m.save_pretrained(str(d))
    with open(d / "adapter_config.json") as f:
        return str(d), json.load(f)


def _load_config_text(src: str, text: bytes) -> None:
    work = tempfile.mkdtemp(prefix="vpt_fuzz_")
    try:
        d = os.path.join(work, "a")
        shutil.copytree(src, d)
        with open(os.path.join(d, "adapter_config.json"), "wb") as f:
            f.write(text)
        try:
            from_pretrained(d, max_params=MAX_PARAMS)
        except VptError as e:
            assert str(e), "a vpt error needs a message"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
def test_fuzz_adapter_config(artifact):
    src, base = artifact
    rss0 = _rss_kb()

    @settings(settings.get_profile(PROFILE))
    @given(cfg=mutations(base))
    def run(cfg):
        _load_config_text(src, json.dumps(cfg).encode())

    run()
    assert _rss_kb() - rss0 < MAX_RSS_GROWTH_KB


def test_fuzz_adapter_config_bytes(artifact):
    src, base = artifact
    good = json.dumps(base).encode()

    @settings(settings.get_profile(PROFILE))
    @given(data=st.one_of(st.binary(max_size=200), st.integers(0, len(good)).map(lambda n: good[:n]),
                          st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(0, 100_000))))
    def run(data):
        _load_config_text(src, data)

    run()


# --- YAML recipes -------------------------------------------------------------------------------------------
def _resolve_yaml(text: bytes) -> None:
    """``vpt train -c RECIPE`` on the fuzzed recipe, up to the data (which does not exist): the whole config
    path (task choice, merge with flags, typing, validation, run folder) must end in a message and exit 2."""
    import contextlib
    import io

    from vpt.cli import main
    work = tempfile.mkdtemp(prefix="vpt_fuzz_")
    try:
        path = os.path.join(work, "recipe.yaml")
        with open(path, "wb") as f:
            f.write(text)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["train", "-c", path, "--data", os.path.join(work, "no_data"), "--output",
                       os.path.join(work, "run"), "--epochs", "1"])
        assert rc == 2 and "error: " in err.getvalue(), (rc, err.getvalue()[-500:])
    finally:
        shutil.rmtree(work, ignore_errors=True)


SECTIONS = ["model", "data", "train", "optim", "sched", "augment", "output", "backbone", "prompt", "head", "epochs",
            "lr", "batch_size", "kind", "num_tokens", "root", "shots", "val_fraction", "dir"]
yaml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(SECTIONS), st.text(max_size=8)), inner,
                                                 max_size=4)), max_leaves=15)


def _recipe_docs():
    """Recipes made of the real sections and field names, with values of any type: past the key checks."""
    import dataclasses
    import typing

    from vpt.tasks.classification import RunConfig
    hints = typing.get_type_hints(RunConfig)
    fields = {name: sorted(f.name for f in dataclasses.fields(tp)) for name, tp in hints.items()
              if dataclasses.is_dataclass(tp)}
    odd = st.one_of(scalars, st.integers(-5, 5), st.sampled_from([0, -1, 1e30, -1e30, float("inf"), float("nan"),
                                                                     1e-30, "inf", "nan", "adamw", "cosine"]),
                    st.lists(scalars, max_size=3))
    section = st.sampled_from(sorted(fields)).flatmap(
        lambda name: st.tuples(st.just(name), st.dictionaries(st.sampled_from(fields[name]), odd, max_size=3)))
    return st.lists(section, max_size=4).map(dict)


@pytest.mark.slow
def test_fuzz_yaml_config():
    import yaml
    rss0 = _rss_kb()

    @settings(settings.get_profile(PROFILE))
    @given(doc=st.one_of(
        st.dictionaries(st.sampled_from(SECTIONS), yaml_values, max_size=5).map(
            lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
        _recipe_docs().map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
        st.binary(max_size=200),
        st.text(alphabet=string.printable + "&*!|>{}[]:-", max_size=200).map(str.encode)))
    def run(doc):
        _resolve_yaml(doc)

    run()
    assert _rss_kb() - rss0 < MAX_RSS_GROWTH_KB


# --- data CSVs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def csv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_csv")
    make_image_folder(root / "imgs", classes=("a", "b"), per_class=2)
    return str(root)


cells = st.one_of(st.text(max_size=20), st.sampled_from(["imgs/a/000.png", "imgs/b/001.png", "a", "b", "train",
                                                         "val", "test", "../../etc/passwd", "/dev/zero", "",
                                                         "imgs/a", "imgs/a/000.png\x00", '"', "\ufeffpath"]))


def test_fuzz_csv(csv_root):
    from vpt.data import load_splits
    rss0 = _rss_kb()

    @settings(settings.get_profile(PROFILE))
    @given(header=st.one_of(st.just("path,label"), st.just("path,label,split"), st.text(max_size=30)),
           rows=st.lists(st.lists(cells, min_size=0, max_size=4), max_size=8),
           raw=st.one_of(st.none(), st.binary(max_size=200)),
           encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    def run(header, rows, raw, encoding):
        text = "\n".join([header] + [",".join(r) for r in rows]) + "\n"
        path = os.path.join(csv_root, "fuzz.csv")
        try:
            data = raw if raw is not None else text.encode(encoding)
        except UnicodeEncodeError:
            data = text.encode("utf-8")
        with open(path, "wb") as f:
            f.write(data)
        try:
            load_splits(path, val_fraction=0.5, shots=1)
        except VptError as e:
            assert str(e)

    run()
    assert _rss_kb() - rss0 < MAX_RSS_GROWTH_KB
