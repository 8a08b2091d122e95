"""Zero-shot CLIP: templates, the text classifier and its cache, metrics, and `vpt zeroshot` end to end.

Tiny random open_clip models built in code, saved as a local weights file; the real BPE tokenizer.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import make_image_folder

import vpt
from vpt import zeroshot as zs
from vpt.cli import main
from vpt.config import ConfigError

open_clip = pytest.importorskip("open_clip")

TINY_CLIP = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
CLASSES = ("cat", "dog", "golden_retriever", "frog", "red_car", "tree")
TEMPLATES = ["a photo of a {c}.", "a blurry photo of the {c}.", "art of a {c}."]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A 6-class image folder and a tiny CLIP saved as safetensors (seed 3)."""
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("zs")
    data = make_image_folder(root / "data", classes=CLASSES, per_class=3)
    adapter = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=3, model_kwargs=TINY_CLIP)
    weights = str(root / "clip.safetensors")
    save_file({k: v.contiguous() for k, v in adapter.model.state_dict().items()}, weights)
    tfile = root / "templates.txt"
    tfile.write_text("# my templates\n" + "\n".join(TEMPLATES) + "\n\n")
    return {"root": root, "data": data, "weights": weights, "templates": str(tfile), "mem": adapter}


@pytest.fixture(scope="module")
def adapter(env):
    return vpt.create_backbone("open_clip:ViT-B-32", weights=env["weights"], model_kwargs=TINY_CLIP)


# --- templates and class names ----------------------------------------------------------------------
def test_template_sets_are_open_clips():
    openai = zs.load_templates("openai")
    assert len(openai) == len(open_clip.OPENAI_IMAGENET_TEMPLATES) == 80
    assert [t.format(c="cat") for t in openai] == [f("cat") for f in open_clip.OPENAI_IMAGENET_TEMPLATES]
    simple = zs.load_templates("simple")
    assert [t.format(c="dog") for t in simple] == [f("dog") for f in open_clip.SIMPLE_IMAGENET_TEMPLATES]


def test_template_file_and_bad_templates(env, tmp_path):
    assert zs.load_templates(env["templates"]) == TEMPLATES
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {c}.\na photo of a cat.\n")
    with pytest.raises(ConfigError, match=r"line 2.*has no '\{c\}'"):
        zs.load_templates(str(bad))
    with pytest.raises(ConfigError, match=r"fields \['n'\] besides"):
        zs.load_templates(["{n} photos of {c}"])
    with pytest.raises(ConfigError, match="neither a template set.*did you mean 'openai'"):
        zs.load_templates("opnai")


def test_class_names(env, tmp_path):
    assert zs.folder_classes(env["data"]) == sorted(CLASSES)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="2 class names but the data has 6 class folders"):
        zs.read_class_names(str(names), expected=6)


# --- metrics ----------------------------------------------------------------------------------------
def test_metrics_match_clip_benchmark_definitions():
    logits = torch.tensor([[3., 2, 1, 0, 0, 0], [0, 3, 2, 1, 0, 0], [1, 2, 3, 0, 0, 0], [-1, .5, .4, .3, 1, 2]])
    targets = torch.tensor([0, 2, 0, 0])
    m, rows = zs.classification_metrics(logits, targets, list("abcdef"))
    assert m["acc1"] == 0.25  # only sample 0
    assert m["acc5"] == 0.75  # sample 3's target 0 is rank 6 of 6
    assert m["mean_per_class_recall"] == (1 / 3 + 0 / 1) / 2  # classes without images are left out
    assert [r["n"] for r in rows] == [3, 0, 1, 0, 0, 0] and rows[1]["recall"] is None
    m3, rows3 = zs.classification_metrics(logits[:, :3], targets, list("abc"))
    assert m3["acc5"] is None  # CLIP_benchmark: NaN below 5 classes; vpt: null, with the reason
    assert "at least 5 classes; the data has 3" in zs.undefined_metrics(m3, rows3)["acc5"]


# --- the classifier and zero-shot accuracy ----------------------------------------------------------
@pytest.fixture(scope="module")
def independent(env):
    """Straight open_clip, no vpt: model + transforms from the file, CLIP_benchmark's classifier recipe."""
    from PIL import Image
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=env["weights"], **TINY_CLIP)
    model.eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        clf = []
        for c in sorted(CLASSES):
            e = F.normalize(model.encode_text(tok([t.format(c=c.replace("_", " ")) for t in TEMPLATES])), dim=-1)
            e = e.mean(dim=0)
            clf.append(e / e.norm())
        clf = torch.stack(clf, dim=1)  # (D, C)
        preds, targets = [], []
        for ci, c in enumerate(sorted(CLASSES)):
            folder = os.path.join(env["data"], c)
            for f in sorted(os.listdir(folder)):
                x = preprocess(Image.open(os.path.join(folder, f)))[None]
                logits = 100.0 * F.normalize(model.encode_image(x), dim=-1) @ clf
                preds.append(int(logits.argmax()))
                targets.append(ci)
    return torch.tensor(preds), torch.tensor(targets), clf.T


def test_zeroshot_accuracy_equals_independent_computation(env, adapter, independent):
    preds, targets, clf = independent
    out = zs.evaluate_folder(adapter, env["data"], templates=env["templates"], batch_size=5)
    assert out["class_names"] == [c.replace("_", " ") for c in sorted(CLASSES)]
    assert out["num_images"] == len(targets) == 18
    assert torch.equal(out["targets"], targets) and torch.equal(out["logits"].argmax(dim=1), preds)
    acc1 = (preds == targets).double().mean().item()
    assert out["metrics"]["acc1"] == acc1
    recalls = [((preds == c) & (targets == c)).sum().item() / 3 for c in range(6)]
    assert [r["recall"] for r in out["per_class"]] == recalls
    assert out["metrics"]["mean_per_class_recall"] == pytest.approx(sum(recalls) / 6, abs=1e-12)
    assert len(set(preds.tolist())) > 1  # a random model that predicts one class would make this test weak
    built = zs.text_classifier(adapter, out["class_names"], TEMPLATES)
    torch.testing.assert_close(built, clf, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_classifier_cache_keys_and_reuse(env, adapter, tmp_path, monkeypatch, caplog):
    names = ["cat", "dog"]
    first = zs.text_classifier(adapter, names, TEMPLATES, cache_dir=str(tmp_path))
    files = os.listdir(tmp_path)
    assert len(files) == 1
    calls = []
    real = open_clip.build_zero_shot_classifier
    monkeypatch.setattr(open_clip, "build_zero_shot_classifier", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(zs.text_classifier(adapter, names, TEMPLATES, cache_dir=str(tmp_path)), first)
    assert calls == []  # served from disk
    zs.text_classifier(adapter, names, TEMPLATES[:2], cache_dir=str(tmp_path))  # other templates
    zs.text_classifier(adapter, ["cat", "frog"], TEMPLATES, cache_dir=str(tmp_path))  # other classes
    other = vpt.create_backbone("open_clip:ViT-B-32", pretrained=False, init_seed=4, model_kwargs=TINY_CLIP)
    zs.text_classifier(other, names, TEMPLATES, cache_dir=str(tmp_path))  # other weights
    assert len(calls) == 3 and len(os.listdir(tmp_path)) == 4
    path = os.path.join(tmp_path, files[0])
    with open(path, "wb") as f:
        f.write(b"not safetensors")
    rebuilt = zs.text_classifier(adapter, names, TEMPLATES, cache_dir=str(tmp_path))
    assert len(calls) == 4 and torch.equal(rebuilt, first) and "ignoring unreadable" in caplog.text


# --- CLI ----------------------------------------------------------------------------------------------
def test_cli_zeroshot_end_to_end(env, adapter, independent, tmp_path, capsys):
    out_json = tmp_path / "res" / "result.json"
    argv = ["zeroshot", "--model", f"open_clip:ViT-B-32/{env['weights']}", "--model-kwargs", json.dumps(TINY_CLIP),
            "--data", env["data"], "--templates", env["templates"], "--cache-dir", str(tmp_path / "cache"),
            "--batch-size", "4", "--device", "cpu", "--output", str(out_json)]
    assert main(argv) == 0
    record = json.loads(out_json.read_text())
    preds, targets, _ = independent
    assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language", "split", "num_images",
                           "num_evaluated", "skipped_unreadable", "undefined_metrics"}
    assert (record["split"], record["num_images"], record["skipped_unreadable"]) == ("all", 18, 0)
    assert record["task"] == "zeroshot_classification" and record["language"] == "en"
    assert record["model"] == "ViT-B-32" and record["pretrained"] == env["weights"] and record["dataset"] == "data"
    assert record["metrics"]["acc1"] == (preds == targets).double().mean().item()
    assert set(record["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    details = json.loads((tmp_path / "res" / "result.details.json").read_text())
    assert [r["class"] for r in details["per_class"]][3] == "golden retriever"
    assert details["weights_id"] == adapter.weights_id()
    printed = capsys.readouterr().out
    assert "golden retriever" in printed and "recall" in printed
    # same thing through --weights, from the cache this time
    argv2 = ["zeroshot", "--model", "open_clip:ViT-B-32", "--weights", env["weights"], "--model-kwargs",
             json.dumps(TINY_CLIP), "--data", env["data"], "--templates", env["templates"],
             "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(argv2) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"] == record["metrics"]
    assert len(os.listdir(tmp_path / "cache")) == 1


@pytest.mark.parametrize("case", ["classnames", "template", "arch", "other_arch", "offline_tag"])
def test_cli_zeroshot_errors(env, tmp_path, capsys, case):
    base = ["zeroshot", "--data", env["data"], "--no-cache", "--device", "cpu"]
    mk = json.dumps(TINY_CLIP)
    if case == "classnames":
        names = tmp_path / "names.txt"
        names.write_text("one\ntwo\nthree\n")
        argv = base + ["--model", "open_clip:ViT-B-32", "--weights", env["weights"], "--classnames", str(names)]
        expect = ["3 class names but the data has 6 class folders"]
    elif case == "template":
        bad = tmp_path / "t.txt"
        bad.write_text("a photo of a cat\n")
        argv = base + ["--model", "open_clip:ViT-B-32", "--weights", env["weights"], "--templates", str(bad)]
        expect = ["has no '{c}'"]
    elif case == "arch":
        argv = base + ["--model", "open_clip:ViT-B-23", "--random-init"]
        expect = ["unknown open_clip architecture 'ViT-B-23'", "ViT-B-32"]
    elif case == "other_arch":
        other = dict(TINY_CLIP, vision_cfg=dict(TINY_CLIP["vision_cfg"], width=48))
        argv = base + ["--model", "open_clip:ViT-B-32", "--weights", env["weights"],
                       "--model-kwargs", json.dumps(other)]
        expect = ["does not fit open_clip 'ViT-B-32'", env["weights"]]
    else:
        argv = base + ["--model", "open_clip:ViT-B-32/laion2b_s34b_b79k", "--model-kwargs", mk]
        expect = ["could not fetch weights", "offline", "--weights PATH"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for text in expect:
        assert text in err, err


# --- the data as `vpt train` reads it -----------------------------------------------------------------
def _zs(env, data, *extra):
    return ["zeroshot", "--model", "open_clip:ViT-B-32", "--weights", env["weights"], "--model-kwargs",
            json.dumps(TINY_CLIP), "--data", str(data), "--templates", env["templates"], "--no-cache",
            "--device", "cpu", *extra]


def _truncate(path):
    with open(path, "rb") as f:
        head = f.read()
    with open(path, "wb") as f:
        f.write(head[: len(head) // 3])


def test_cli_zeroshot_skips_and_counts_a_truncated_jpeg(env, tmp_path, capsys):
    """A truncated JPEG (an interrupted download) is skipped and counted, as in `vpt train`; the JSON says so."""
    data = make_image_folder(tmp_path / "photos", classes=("cat", "dog", "frog"), per_class=3, fmt="jpg")
    bad = os.path.join(data, "dog", "001.jpg")
    _truncate(bad)
    out = tmp_path / "r.json"
    assert main(_zs(env, data, "--output", str(out))) == 0
    printed = capsys.readouterr().out
    assert "8 of 9 images evaluated; 1 unreadable skipped" in printed and bad in printed
    text = out.read_text()
    record = json.loads(text)
    assert (record["num_images"], record["num_evaluated"], record["skipped_unreadable"]) == (9, 8, 1)
    details = json.loads((tmp_path / "r.details.json").read_text())
    assert details["skipped_unreadable"] == [bad]
    assert {r["class"]: r["n"] for r in details["per_class"]} == {"cat": 3, "dog": 2, "frog": 3}


def test_cli_zeroshot_reads_split_folders_and_chooses_the_split(env, tmp_path, capsys):
    """root/{train,test}/<class>/: the classes are the class folders (not 'train' and 'test'); the test split
    by default, --split all / train on request, and a split the data lacks is a one-line error (exit 2)."""
    root = tmp_path / "split"
    make_image_folder(root / "train", classes=("cat", "dog", "frog"), per_class=4)
    make_image_folder(root / "test", classes=("cat", "dog", "frog"), per_class=2, seed=1)
    out = tmp_path / "r.json"
    assert main(_zs(env, root, "--output", str(out))) == 0
    record = json.loads(out.read_text())
    details = json.loads((tmp_path / "r.details.json").read_text())
    assert [r["class"] for r in details["per_class"]] == ["cat", "dog", "frog"]
    assert (record["split"], record["num_images"]) == ("test", 6)
    assert main(_zs(env, root, "--split", "all", "--output", str(out))) == 0
    assert (json.loads(out.read_text())["split"], json.loads(out.read_text())["num_images"]) == ("all", 18)
    assert main(_zs(env, root, "--split", "train", "--output", str(out))) == 0
    assert json.loads(out.read_text())["num_images"] == 12
    capsys.readouterr()
    assert main(_zs(env, root, "--split", "val")) == 2
    err = capsys.readouterr().err
    assert "has no val split" in err and "choose --split all or one of train, test" in err


def test_cli_zeroshot_reads_a_csv(env, tmp_path):
    data = make_image_folder(tmp_path / "imgs", classes=("cat", "dog", "frog"), per_class=2)
    rows = ["path,label,split"] + [f"{c}/{i:03d}.png,{c},{'test' if i else 'train'}" for c in ("cat", "dog", "frog")
                                   for i in range(2)]
    csv_path = tmp_path / "imgs" / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    assert main(_zs(env, csv_path, "--output", str(out))) == 0
    record = json.loads(out.read_text())
    assert (record["dataset"], record["split"], record["num_images"]) == ("labels", "test", 3)


def test_cli_zeroshot_json_is_strict_below_five_classes(env, tmp_path, capsys):
    """Three classes: top-5 is undefined. The file and the printed line parse with a strict parser (no NaN),
    and the reason is written beside the null."""
    data = make_image_folder(tmp_path / "three", classes=("cat", "dog", "frog"), per_class=2)
    out = tmp_path / "r.json"
    assert main(_zs(env, data, "--output", str(out))) == 0

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    record = strict(out.read_text())
    assert record["metrics"]["acc5"] is None and "at least 5 classes" in record["undefined_metrics"]["acc5"]
    strict((tmp_path / "r.details.json").read_text())
    printed = capsys.readouterr().out
    assert strict(printed.strip().splitlines()[-2])["metrics"]["acc5"] is None  # the last line is 'wrote ...'
    assert "acc5: undefined (top-5 accuracy needs at least 5 classes" in printed
