"""Tasks on the Hugging Face Hub (vpt.hub): push with a model card, load by hub id, all offline.

Downloads resolve from a hand-built hub cache (``models--org--name/refs/main``, ``snapshots/<sha>/``) under
HF_HUB_OFFLINE=1; online paths and uploads go to ``FakeHub``, a patched ``huggingface_hub.HfApi`` /
``hf_hub_download`` that keeps commits in memory and downloads into the same cache layout, so a test reads
back exactly what was committed (the card included) and loads it again."""
import hashlib
import json
import os
import types

import pytest
import torch

import vpt
from helpers import TINY_VIT, TINY_VIT_NAME, make_image_folder
from vpt.cli import main

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import ModelCard, errors  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ["cat", "dog", "frog"]
ALLOWED = {"adapter_config.json", "adapter_model.safetensors", "README.md", "results.json"}


# --- a tiny task and a hub that lives in memory ---------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = vpt.create_model(TINY_VIT_NAME, prompt={"kind": "vpt_deep", "num_tokens": 2}, num_classes=3,
                         class_names=CLASSES, pretrained=False, model_kwargs=dict(TINY_VIT))
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    """A run folder as vpt train leaves it: best/ + results.json."""
    run = tmp_path_factory.mktemp("run") / "cifar-vpt"
    model.save_pretrained(str(run / "best"))
    results = {"task": "classification", "command": ["vpt", "train", "-c", "recipe.yaml", "--epochs", "3"],
               "val": {"top1": 81.25, "top5": 100.0, "num_samples": 16}, "test": {"top1": 79.5, "num_samples": 40}}
    (run / "results.json").write_text(json.dumps(results))
    return str(run)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return str(make_image_folder(tmp_path_factory.mktemp("img") / "data", per_class=1))


def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def write_cache(cache, repo_id, files, ref="main", commit=None):
    """huggingface_hub's cache layout by hand: blobs/<hash>, snapshots/<commit>/<name> -> blob, refs/<ref>."""
    folder = os.path.join(str(cache), "models--" + repo_id.replace("/", "--"))
    commit = commit or _sha(b"".join(sorted(files.values())))
    for name, data in files.items():
        blob = os.path.join(folder, "blobs", hashlib.sha256(data).hexdigest())
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as f:
            f.write(data)
        link = os.path.join(folder, "snapshots", commit, name)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    if ref:
        os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
        with open(os.path.join(folder, "refs", ref), "w") as f:
            f.write(commit)
    return commit


def artifact_files(folder, **extra):
    out = {n: open(os.path.join(folder, n), "rb").read() for n in ("adapter_config.json", "adapter_model.safetensors")}
    out.update(extra)
    return out


def _error(cls, msg):
    e = cls.__new__(cls)  # the real classes want an HTTP response; the message is what vpt reads
    Exception.__init__(e, msg)
    return e


class FakeHub:
    """In-memory repos behind a patched HfApi / hf_hub_download; downloads land in the real cache layout."""

    def __init__(self, cache):
        self.cache, self.repos, self.downloads, self.calls = str(cache), {}, [], []
        self.fail = None  # an exception model_info raises

    def add(self, repo_id, files, sizes=None, ref="main"):
        repo = self.repos.setdefault(repo_id, {"commits": {}, "refs": {}, "sizes": {}})
        commit = _sha(repo_id.encode() + b"".join(sorted(files.values())) + str(len(repo["commits"])).encode())
        repo["commits"][commit] = dict(files)
        repo["sizes"][commit] = dict(sizes or {})
        repo["refs"][ref] = commit
        return commit

    def _commit(self, repo_id, revision):
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _error(errors.RepositoryNotFoundError, f"404 {repo_id}")
        rev = revision or "main"
        if rev in repo["commits"]:
            return repo, rev
        if rev in repo["refs"]:
            return repo, repo["refs"][rev]
        raise _error(errors.RevisionNotFoundError, f"404 revision {rev}")

    # huggingface_hub.HfApi
    def api(self, token=None, **kw):
        import inspect
        inspect.signature(REAL_API).bind(token=token, **kw)
        hub = self

        class Api:
            def model_info(self, repo_id, revision=None, files_metadata=False, token=None, **kw):
                real_signature("model_info", self, repo_id, revision=revision, files_metadata=files_metadata,
                               token=token, **kw)
                assert files_metadata  # the sizes are what vpt checks before downloading
                hub.calls.append(("model_info", repo_id, revision))
                if hub.fail is not None:
                    raise hub.fail
                repo, commit = hub._commit(repo_id, revision)
                sizes = repo["sizes"][commit]
                files = repo["commits"][commit]
                return types.SimpleNamespace(sha=commit, siblings=[
                    types.SimpleNamespace(rfilename=n, size=sizes.get(n, len(b))) for n, b in files.items()])

            def create_repo(self, repo_id, private=None, exist_ok=False, token=None, **kw):
                real_signature("create_repo", self, repo_id, private=private, exist_ok=exist_ok, token=token, **kw)
                hub.calls.append(("create_repo", repo_id, private))
                hub.repos.setdefault(repo_id, {"commits": {}, "refs": {}, "sizes": {}})

            def create_branch(self, repo_id, branch, exist_ok=False, token=None, **kw):
                real_signature("create_branch", self, repo_id, branch=branch, exist_ok=exist_ok, token=token, **kw)
                hub.calls.append(("create_branch", repo_id, branch))
                repo = hub.repos[repo_id]
                repo["refs"].setdefault(branch, repo["refs"].get("main"))

            def create_commit(self, repo_id, operations, commit_message, token=None, revision=None, **kw):
                real_signature("create_commit", self, repo_id, operations=operations, commit_message=commit_message,
                               token=token, revision=revision, **kw)
                assert all(isinstance(op, hf.CommitOperationAdd) for op in operations)
                hub.calls.append(("create_commit", repo_id, revision, commit_message))
                files = {op.path_in_repo: open(op.path_or_fileobj, "rb").read() for op in operations}
                commit = hub.add(repo_id, files, ref=revision or "main")
                return types.SimpleNamespace(oid=commit, commit_url=f"https://huggingface.co/{repo_id}/commit/{commit}")
        return Api()

    # huggingface_hub.hf_hub_download
    def download(self, repo_id, filename, revision=None, cache_dir=None, token=None, local_files_only=False, **kw):
        real_signature("hf_hub_download", repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
                       local_files_only=local_files_only, **kw)
        assert filename in ALLOWED, filename  # the allow-list, asked of the download itself
        if local_files_only:
            return REAL_DOWNLOAD(repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=True)
        repo, commit = self._commit(repo_id, revision)
        if filename not in repo["commits"][commit]:
            raise _error(errors.RemoteEntryNotFoundError, f"404 {filename}")
        self.downloads.append(filename)
        write_cache(cache_dir, repo_id, {filename: repo["commits"][commit][filename]}, ref=None, commit=commit)
        return os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"), "snapshots", commit, filename)

    def committed(self, repo_id, ref="main"):
        repo = self.repos[repo_id]
        return repo["commits"][repo["refs"][ref]]


REAL_DOWNLOAD = hf.hf_hub_download
REAL_API = hf.HfApi


def real_signature(name, *args, **kwargs):
    """The call vpt made must bind to the real huggingface_hub signature (the fake accepts anything)."""
    import inspect
    fn = REAL_DOWNLOAD if name == "hf_hub_download" else getattr(REAL_API, name)
    inspect.signature(fn).bind(*args, **kwargs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    c = tmp_path / "hub-cache"
    c.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return c


@pytest.fixture
def fake(cache, monkeypatch):
    """Online, against FakeHub, logged in."""
    hub = FakeHub(cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf, "HfApi", hub.api)
    monkeypatch.setattr(hf, "hf_hub_download", hub.download)
    monkeypatch.setattr(hf, "get_token", lambda: "hf_test_token")
    return hub


def outputs(m, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        return m(torch.randn(2, 3, 32, 32))


# --- push -------------------------------------------------------------------------------------------
def test_push_run_folder_commits_artifact_results_and_card(fake, run_dir, model, capsys):
    assert main(["push", run_dir, "my-org/cifar-vpt"]) == 0
    files = fake.committed("my-org/cifar-vpt")
    assert set(files) == ALLOWED
    assert files["adapter_model.safetensors"] == open(os.path.join(run_dir, "best", "adapter_model.safetensors"),
                                                      "rb").read()
    card = ModelCard(files["README.md"].decode())
    data = card.data.to_dict()
    assert data["library_name"] == "vpt" and data["pipeline_tag"] == "image-classification"
    assert {"visual-prompt-tuning", "vpt_deep", "classification"} <= set(data["tags"])
    assert "base_model" not in data  # random init: no hub id to claim
    assert data["vpt"]["classes"] == CLASSES and data["vpt"]["backbone"] == TINY_VIT_NAME
    assert data["vpt"]["metrics"]["val"] == {"top1": 81.25, "top5": 100.0, "num_samples": 16}
    assert data["vpt"]["metrics"]["test"]["num_samples"] == 40
    assert data["vpt"]["version"] == vpt.__version__
    assert data["vpt"]["command"] == "vpt train -c recipe.yaml --epochs 3"
    evals = {(r["dataset"]["split"], r["metrics"][0]["type"]): r["metrics"][0]["value"]
             for r in data["model-index"][0]["results"]}
    assert evals[("test", "top1")] == 79.5 and evals[("val", "top1")] == 81.25
    assert "vpt train -c recipe.yaml --epochs 3" in card.text and "| test | 79.5 | - | 40 |" in card.text
    commit = fake.repos["my-org/cifar-vpt"]["refs"]["main"]
    assert f"hf://my-org/cifar-vpt@{commit}" in capsys.readouterr().out

    # read back: the pushed task loads by id and computes what the original does
    loaded = vpt.from_pretrained("my-org/cifar-vpt")
    assert loaded.revision == commit and loaded.name_or_path == f"hf://my-org/cifar-vpt@{commit}"
    torch.testing.assert_close(outputs(loaded), outputs(model), rtol=0, atol=0)
    assert set(fake.downloads) <= ALLOWED


def test_model_push_to_hub_on_a_branch_then_load_by_revision(fake, model):
    res = model.push_to_hub("me/tiny", private=True, revision="dev", commit_message="first")
    assert ("create_repo", "me/tiny", True) in fake.calls and ("create_branch", "me/tiny", "dev") in fake.calls
    assert ("create_commit", "me/tiny", "dev", "first") in fake.calls
    assert set(fake.committed("me/tiny", "dev")) == ALLOWED - {"results.json"}  # a model has no run results
    loaded = vpt.from_pretrained("me/tiny", revision="dev")
    assert loaded.revision == res.commit
    torch.testing.assert_close(outputs(loaded), outputs(model), rtol=0, atol=0)
    # the same commit, pinned in the id
    assert vpt.Artifact.open(f"hf://me/tiny@{res.commit}").revision == res.commit


def test_push_without_token_is_a_message_and_nothing_is_sent(fake, run_dir, monkeypatch, capsys):
    monkeypatch.setattr(hf, "get_token", lambda: None)
    assert main(["push", run_dir, "my-org/x"]) == 2
    err = capsys.readouterr().err
    assert "needs a token" in err and "hf auth login" in err and "HF_TOKEN" in err
    assert not fake.calls


def test_push_refuses_bad_ids_and_folders(fake, tmp_path, run_dir, capsys):
    assert main(["push", run_dir, "not a repo"]) == 2
    assert "is not a hub repo id" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "me/x"]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    assert not fake.calls


# --- load: offline, from a hand-built cache ----------------------------------------------------------
@pytest.fixture
def cached(cache, run_dir):
    """org/task in the cache at refs/main, with a README that matches its config."""
    files = artifact_files(os.path.join(run_dir, "best"),
                           **{"README.md": b"---\nlibrary_name: vpt\n---\n# task\n",
                              "results.json": open(os.path.join(run_dir, "results.json"), "rb").read()})
    return write_cache(cache, "org/task", files)


def test_offline_predict_eval_inspect_record_the_commit(cached, images, tmp_path, capsys, model):
    out = tmp_path / "pred.json"
    assert main(["predict", "hf://org/task", images, "--output", str(out)]) == 0
    records = json.loads(out.read_text())
    assert len(records) == 3 and all(r["artifact"] == f"hf://org/task@{cached}" for r in records)
    assert f"hf://org/task@{cached}" in capsys.readouterr().err

    assert main(["eval", "hf://org/task", "--data", images, "--split", "all", "--json", str(tmp_path / "m.json")]) == 0
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["revision"] == cached and res["artifact"] == f"hf://org/task@{cached}"

    capsys.readouterr()
    assert main(["inspect", f"hf://org/task@{cached}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["revision"] == cached and report["backbone"]["name"] == TINY_VIT_NAME

    mt = vpt.MultiTaskModel.from_pretrained({"hub": "hf://org/task"})
    assert mt.tasks["hub"].revision == cached


def test_offline_missing_repo_or_revision_is_a_message(cache, cached, images, capsys):
    assert main(["predict", "hf://org/nothing-here", images]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and "hf://org/nothing-here@main" in err and "nothing of this repo" in err
    other = "0" * 40
    assert main(["predict", f"hf://org/task@{other}", images]) == 2
    err = capsys.readouterr().err
    assert other in err and f"main -> {cached[:12]}" in err  # what is cached, to pin instead


def test_offline_config_cached_but_weights_missing(cache, run_dir, images, capsys):
    files = artifact_files(os.path.join(run_dir, "best"))
    del files["adapter_model.safetensors"]
    write_cache(cache, "org/half", files)
    assert main(["predict", "hf://org/half", images]) == 2
    assert "adapter_model.safetensors of commit" in capsys.readouterr().err


@pytest.mark.parametrize("spec,match", [
    ("hf://", "is not a hub task id"),
    ("hf://a/b/c", "is not a hub task id"),
    ("hf://org/name@", "nothing after '@'"),
    ("hf://../etc", "is not a hub task id"),
])
def test_bad_hub_ids(cache, spec, match):
    with pytest.raises(vpt.ArtifactError, match=match):
        vpt.Artifact.open(spec)


def test_revision_for_a_local_folder_is_refused(run_dir):
    with pytest.raises(vpt.ArtifactError, match="revision='v1' is for tasks on the Hugging Face Hub"):
        vpt.Artifact.open(os.path.join(run_dir, "best"), revision="v1")
    with pytest.raises(vpt.ArtifactError, match="names revision 'a' but revision='b'"):
        vpt.Artifact.open("hf://org/x@a", revision="b")


def test_local_folder_wins_over_a_hub_id(run_dir, monkeypatch, cache):
    monkeypatch.chdir(os.path.dirname(run_dir))
    m = vpt.from_pretrained(os.path.join(os.path.basename(run_dir), "best"))  # "cifar-vpt/best": a folder here
    assert m.revision is None and m.name_or_path == os.path.join(run_dir, "best")


# --- load: what the hub may not make vpt do ----------------------------------------------------------
def test_config_with_a_loader_option_is_refused_as_locally(cache, run_dir):
    files = artifact_files(os.path.join(run_dir, "best"))
    cfg = json.loads(files["adapter_config.json"])
    cfg["backbone"]["model_kwargs"]["pretrained_cfg_overlay"] = {"file": "/etc/passwd"}
    files["adapter_config.json"] = json.dumps(cfg).encode()
    write_cache(cache, "evil/loader", files)
    with pytest.raises(vpt.ArtifactError, match="pretrained_cfg_overlay.file is not allowed"):
        vpt.from_pretrained("evil/loader")


def test_card_claiming_another_backbone_is_refused(cache, run_dir):
    card = b"---\nlibrary_name: vpt\nbase_model: timm/vit_large_patch16_224.augreg_in21k\n---\n"
    write_cache(cache, "evil/card", artifact_files(os.path.join(run_dir, "best"), **{"README.md": card}))
    with pytest.raises(vpt.ArtifactError, match="card claims base_model 'timm/vit_large_patch16_224"):
        vpt.Artifact.open("hf://evil/card")


def test_allow_list_and_sizes_checked_before_download(fake, run_dir):
    files = artifact_files(os.path.join(run_dir, "best"),
                           **{"pytorch_model.bin": b"pickle!", "modeling.py": b"import os", "model.pkl": b"x"})
    fake.add("org/mixed", files)
    vpt.from_pretrained("org/mixed")
    assert sorted(fake.downloads) == ["adapter_config.json", "adapter_model.safetensors"]

    fake.downloads.clear()
    fake.add("org/huge", artifact_files(os.path.join(run_dir, "best")), sizes={"adapter_model.safetensors": 10 ** 10})
    art = vpt.Artifact.open("hf://org/huge")  # the config is fine; the weights are fetched when needed
    with pytest.raises(vpt.ArtifactError, match="10,000,000,000 bytes, over the .*checked before downloading"):
        art.load()
    assert "adapter_model.safetensors" not in fake.downloads

    fake.add("org/bigcfg", artifact_files(os.path.join(run_dir, "best")), sizes={"adapter_config.json": 1 << 30})
    with pytest.raises(vpt.ArtifactError, match="adapter_config.json is 1,073,741,824 bytes"):
        vpt.Artifact.open("hf://org/bigcfg")


def test_not_a_vpt_repo(fake):
    fake.add("peft/adapter", {"adapter_model.bin": b"x", "README.md": b"# hi"})
    with pytest.raises(vpt.ArtifactError, match="holds no adapter_config.json: it is not a vpt task"):
        vpt.Artifact.open("hf://peft/adapter")
    assert not fake.downloads


@pytest.mark.parametrize("error,match", [
    (errors.RepositoryNotFoundError, "no hub repo hf://org/gone, or it is private"),
    (errors.GatedRepoError, "hf://org/gone is gated: accept its conditions"),
])
def test_missing_or_gated_repo(fake, error, match, capsys, images):
    fake.fail = _error(error, "nope")
    with pytest.raises(vpt.ArtifactError, match=match):
        vpt.Artifact.open("hf://org/gone")
    assert main(["predict", "hf://org/gone", images]) == 2
    assert "huggingface.co/org/gone" in capsys.readouterr().err


def test_revision_that_moved(fake, run_dir):
    first = fake.add("org/moving", artifact_files(os.path.join(run_dir, "best")))
    fake.repos["org/moving"]["commits"].pop(first)  # a force-push dropped the commit a result recorded
    fake.add("org/moving", artifact_files(os.path.join(run_dir, "best"), **{"README.md": b"# v2"}))
    with pytest.raises(vpt.ArtifactError, match=f"has no revision '{first}'.*may have moved"):
        vpt.Artifact.open(f"hf://org/moving@{first}")


def test_branch_moving_during_load_gets_one_commit(fake, run_dir, model):
    """Every file comes from the commit the metadata named, even if main moves between the downloads."""
    first = fake.add("org/live", artifact_files(os.path.join(run_dir, "best")))
    art = vpt.Artifact.open("hf://org/live")
    fake.add("org/live", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"junk"})  # main moves
    torch.testing.assert_close(outputs(art.load()), outputs(model), rtol=0, atol=0)
    assert art.revision == first


def test_network_down_falls_back_to_the_cache(fake, cached, monkeypatch):
    fake.fail = ConnectionError("network unreachable")
    assert vpt.Artifact.open("hf://org/task").revision == cached
    with pytest.raises(vpt.ArtifactError, match="cannot reach the Hugging Face Hub and hf://org/other@main"):
        vpt.Artifact.open("hf://org/other")


def test_bare_id_that_is_no_folder_says_both(cache):
    with pytest.raises(vpt.ArtifactError, match="'runs/typo' is no local folder, and as a hub id: HF_HUB_OFFLINE"):
        vpt.from_pretrained("runs/typo")


def test_predict_tasks_mixes_hub_and_local(cached, run_dir, images, tmp_path):
    out = tmp_path / "p.json"
    assert main(["predict", "--tasks", "hub=hf://org/task", f"local={run_dir}/best", images, "--output", str(out)]) == 0
    records = json.loads(out.read_text())
    by_task = {t: [r for r in records if r["task"] == t] for t in ("hub", "local")}
    assert all(r["artifact"] == f"hf://org/task@{cached}" for r in by_task["hub"])
    assert all("artifact" not in r for r in by_task["local"])
    assert [r["predictions"] for r in by_task["hub"]] == [r["predictions"] for r in by_task["local"]]


# --- the card's base model ---------------------------------------------------------------------------
@pytest.mark.slow  # imports timm's and open_clip's pretrained tables
def test_base_model_ids_come_from_the_libraries():
    from vpt.backbones.hub_ids import base_model_id
    assert base_model_id({"name": "timm:vit_tiny_patch16_224.augreg_in21k", "weights_id": "hub:augreg_in21k"}) == \
        "timm/vit_tiny_patch16_224.augreg_in21k"
    assert base_model_id({"name": "open_clip:ViT-B-32/openai", "weights_id": "hub:openai"}) == \
        "timm/vit_base_patch32_clip_224.openai"
    assert base_model_id({"name": "open_clip:hf-hub:org/clip", "weights_id": "hub:default"}) == "org/clip"
    for weights in ("random:0", "file:" + "0" * 64):
        assert base_model_id({"name": "timm:vit_tiny_patch16_224.augreg_in21k", "weights_id": weights}) is None


def test_card_names_the_base_model_and_a_matching_card_loads(cache, run_dir):
    from vpt.hub import check_card
    from vpt.hub_push import make_card
    config = vpt.Artifact.open(os.path.join(run_dir, "best")).config
    config["backbone"].update(name="timm:vit_tiny_patch16_224.augreg_in21k", tag="augreg_in21k",
                              weights_id="hub:augreg_in21k", pretrained=True)
    card = make_card(config, None, "org/t", "classification")
    assert card.data.base_model == "timm/vit_tiny_patch16_224.augreg_in21k"
    path = cache / "README.md"
    card.save(str(path))
    check_card(str(path), config, "hf://org/t@x")  # agrees: accepted
    config["backbone"].update(name="timm:vit_small_patch16_224.augreg_in21k")
    with pytest.raises(vpt.ArtifactError, match="card claims base_model 'timm/vit_tiny_patch16_224.augreg_in21k'"):
        check_card(str(path), config, "hf://org/t@x")


@pytest.mark.slow
@pytest.mark.subprocess
def test_offline_process_loads_from_the_cache_without_the_network(cached, images, tmp_path):
    """A fresh process, as a user runs it: huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE at import."""
    import subprocess
    import sys
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=os.environ["HF_HUB_CACHE"],
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")  # any network use would fail
    p = subprocess.run([sys.executable, "-m", "vpt", "predict", "hf://org/task", images, "--format", "csv"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("path,rank,label") and f"hf://org/task@{cached}" in p.stderr
    p = subprocess.run([sys.executable, "-m", "vpt", "inspect", "hf://org/absent"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "HF_HUB_OFFLINE is set and hf://org/absent@main" in p.stderr


def test_push_names_no_local_folder_and_a_weights_file_backbone_loads_with_weights(fake, tmp_path):
    from safetensors.torch import save_file
    bb = vpt.create_backbone(TINY_VIT_NAME, pretrained=False, model_kwargs=dict(TINY_VIT))
    wfile = tmp_path / "private" / "folders" / "bb.safetensors"
    wfile.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(wfile))
    m = vpt.create_model(TINY_VIT_NAME, weights=str(wfile), model_kwargs=dict(TINY_VIT), prompt="vpt_shallow",
                         num_classes=2)
    m.push_to_hub("me/filebb")
    cfg = json.loads(fake.committed("me/filebb")["adapter_config.json"])
    assert cfg["backbone"]["weights_file"] == "bb.safetensors"
    with pytest.raises(vpt.ArtifactError, match="pass weights=PATH"):
        vpt.from_pretrained("me/filebb")  # the backbone file is not on the hub (never fetched)
    loaded = vpt.from_pretrained("me/filebb", weights=str(wfile))
    torch.testing.assert_close(outputs(loaded), outputs(m.eval()), rtol=0, atol=0)


def test_server_error_falls_back_to_the_cache(fake, cached):
    fake.fail = _error(errors.HfHubHTTPError, "500 Server Error")
    assert vpt.Artifact.open("hf://org/task").revision == cached


# --- the real huggingface_hub download path, against a stub hub on a loopback port ---------------------
@pytest.fixture
def stub_hub(cache, monkeypatch):
    """A tiny HTTP server answering the two calls a download makes (the model's metadata with file sizes,
    and HEAD / GET of /ORG/NAME/resolve/REV/FILE); the real huggingface_hub client talks to it."""
    import http.server
    import threading
    repos = {}  # repo_id -> (commit, {name: bytes}, {name: advertised size})
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body=b"", headers=None, head=False):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _route(self, head):
            path = self.path.split("?")[0]
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"]:  # /api/models/ORG/NAME[/revision/REV]
                repo_id = "/".join(parts[2:parts.index("revision")] if "revision" in parts else parts[2:])
                if repo_id not in repos:
                    return self._send(404, b'{"error": "Repository not found"}',
                                      {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"})
                commit, files, sizes = repos[repo_id]
                body = json.dumps({"id": repo_id, "sha": commit, "siblings": [
                    {"rfilename": n, "size": sizes.get(n, len(b))} for n, b in files.items()]}).encode()
                return self._send(200, body, {"Content-Type": "application/json"})
            if "resolve" in parts:
                i = parts.index("resolve")
                repo_id, name = "/".join(parts[:i]), "/".join(parts[i + 2:])
                commit, files, _ = repos[repo_id]
                if name not in files:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                served.append((self.command, name))
                data = files[name]
                return self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                              "Content-Type": "application/octet-stream"}, head=head)
            self._send(404)

        def do_GET(self):
            self._route(head=False)

        def do_HEAD(self):
            self._route(head=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)  # read at import; the session checks it
    yield types.SimpleNamespace(repos=repos, served=served)
    server.shutdown()
    server.server_close()


def test_real_client_downloads_only_the_allow_list_from_a_stub_hub(stub_hub, run_dir, model, cache):
    files = artifact_files(os.path.join(run_dir, "best"), **{"pytorch_model.bin": b"pickle", "README.md": b"# t"})
    commit = "ab" * 20
    stub_hub.repos["org/live"] = (commit, files, {})
    loaded = vpt.from_pretrained("org/live")
    assert loaded.revision == commit
    torch.testing.assert_close(outputs(loaded), outputs(model), rtol=0, atol=0)
    assert {n for _, n in stub_hub.served} == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert os.path.isdir(cache / "models--org--live" / "snapshots" / commit)  # huggingface_hub's own cache

    stub_hub.repos["org/big"] = (commit, files, {"adapter_model.safetensors": 1 << 40})
    stub_hub.served.clear()
    with pytest.raises(vpt.ArtifactError, match="checked before downloading"):
        vpt.from_pretrained("org/big")
    assert ("GET", "adapter_model.safetensors") not in stub_hub.served
    with pytest.raises(vpt.ArtifactError, match="no hub repo hf://org/none"):
        vpt.from_pretrained("org/none")
