"""vpt against the reference repositories' own code: tests/data/*.safetensors were written by
benchmarks/reference_goldens.py, running each method's official implementation (KMnP/vpt, CoOp, CoCoOp, KgCoOp,
PromptSRC) on the tiny seeded models below; vpt, given the same weights and the same learnable tensors, must
give the same logits, loss and gradients at 1e-5 in fp32. No reference checkout is needed here."""
import json
import os

import pytest
import torch
import yaml
import torch.nn.functional as F
from safetensors import safe_open

import vpt
from vpt.backbones import state_sha256

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = os.path.join(os.path.dirname(__file__), "data")
TOL = dict(rtol=1e-5, atol=1e-5)
DIFFS = {}  # golden file -> the largest |vpt - reference| over everything compared (``python THIS_FILE`` prints it)


def check(golden, got, want, **tol):
    """assert_close at ``tol`` (default TOL), recording the largest absolute difference for the parity table."""
    got, want = got.detach().double(), want.detach().double()
    DIFFS[golden] = max(DIFFS.get(golden, 0.0), float((got - want).abs().max()))
    torch.testing.assert_close(got, want, **(tol or TOL))


def load_golden(name):
    with safe_open(os.path.join(DATA, name), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def golden_backbone(meta, key="backbone_sha256", module=lambda bb: bb.model):
    bb = vpt.create_backbone(meta["backbone"], pretrained=False, init_seed=int(meta["init_seed"]),
                             model_kwargs=json.loads(meta["model_kwargs"]))
    assert state_sha256(module(bb)) == meta[key], "the library's random init changed: regenerate the goldens"
    return bb


@pytest.mark.parametrize("kind", ["vpt_shallow", "vpt_deep"])
def test_vpt_equals_kmnp_prompted_vision_transformer(kind):
    """KMnP/vpt's PromptedVisionTransformer (its src/models/vit_prompt/vit.py) on the tiny ViT's weights, its own
    random prompts and head: vpt's prompts (block i's prompts replace the previous block's after the class token)
    give its logits, cross-entropy and gradients of every prompt and of the head."""
    name = f"kmnp_{kind}.safetensors"
    g, meta = load_golden(name)
    assert meta["repo"] == "KMnP/vpt" and meta["kind"] == kind
    bb = golden_backbone(meta)
    model = vpt.create_model(bb, prompt={"kind": kind, "num_tokens": int(meta["num_tokens"])},
                             num_classes=g["head_bias"].shape[0], head="linear").eval()
    prompts = model.prompt.prompts
    assert sorted(prompts, key=int) == [str(i) for i in range(len(prompts))]
    assert len(prompts) == sum(k.startswith("prompt_") for k in g)
    with torch.no_grad():
        for i, p in prompts.items():
            p.copy_(g[f"prompt_{i}"])
        model.head.fc.weight.copy_(g["head_weight"])
        model.head.fc.bias.copy_(g["head_bias"])
    logits = model(g["x"])
    check(name, logits.detach(), g["logits"])
    loss = F.cross_entropy(logits, g["labels"])
    check(name, loss.detach().reshape(1), g["loss"])
    loss.backward()
    for i, p in prompts.items():
        assert float(g[f"grad_prompt_{i}"].abs().max()) > 1e-4  # a gradient that can be told apart from zero
        check(name, p.grad, g[f"grad_prompt_{i}"])
    check(name, model.head.fc.weight.grad, g["grad_head_weight"])
    check(name, model.head.fc.bias.grad, g["grad_head_bias"])


def clip_golden(name):
    from vpt.clip import create_clip_model
    g, meta = load_golden(name)
    bb = golden_backbone(meta)
    torch.manual_seed(0)
    model = create_clip_model(bb, json.loads(meta["class_names"]), text=json.loads(meta["text"])).eval()
    tp = model.text_prompt
    assert torch.equal(tp.tokens, g["tokens"])  # open_clip's tokenizer = the reference's
    return g, meta, model, tp


@pytest.mark.parametrize("name", ["coop", "coop_csc_middle"])
def test_coop_equals_coops_own_custom_clip(name):
    """CoOp's CustomCLIP (KaiyangZhou/CoOp trainers/coop.py) with its random context, generic at the end and
    class-specific in the middle: vpt's coop text prompt gives its logits, cross-entropy and context gradient."""
    name = f"{name}.safetensors"
    g, meta, model, tp = clip_golden(name)
    assert meta["repo"] == "KaiyangZhou/CoOp"
    with torch.no_grad():
        tp.ctx.copy_(g["ctx"])
    logits = model(g["x"])
    check(name, logits.detach(), g["logits"])
    loss = F.cross_entropy(logits, g["labels"])
    check(name, loss.detach().reshape(1), g["loss"])
    loss.backward()
    assert float(g["grad_ctx"].abs().max()) > 1e-4
    check(name, tp.ctx.grad, g["grad_ctx"])


def test_cocoop_equals_cocoops_own_custom_clip():
    """CoCoOp's CustomCLIP (CoOp's trainers/cocoop.py): context from 'a photo of a', the meta-net's bias per image;
    vpt's cocoop gives its logits, its training loss and the gradients of the context and the meta-net."""
    name = "cocoop.safetensors"
    g, meta, model, tp = clip_golden(name)
    check(name, tp.ctx.detach(), g["ctx"])  # the same init from the same words
    names = {"linear1.weight": "0.weight", "linear1.bias": "0.bias", "linear2.weight": "2.weight",
             "linear2.bias": "2.bias"}
    params = dict(tp.meta_net.named_parameters())
    with torch.no_grad():
        tp.ctx.copy_(g["ctx"])
        for ref, mine in names.items():
            params[mine].copy_(g[f"meta_net.{ref}"])
        check(name, model(g["x"]), g["logits"])
    model.train()
    loss = F.cross_entropy(model(g["x"]), g["labels"])
    assert model.auxiliary_loss() is None
    check(name, loss.detach().reshape(1), g["loss"])
    loss.backward()
    check(name, tp.ctx.grad, g["grad_ctx"])
    for ref, mine in names.items():
        assert float(g[f"grad_meta_net.{ref}"].abs().max()) > 1e-5
        check(name, params[mine].grad, g[f"grad_meta_net.{ref}"])


def test_kgcoop_equals_kgcoops_own_custom_clip():
    """KgCoOp's CustomCLIP (htyao89/KgCoOp trainers/kgcoop.py) and its trainer's loss CE + 8 * (1 - mean cos of the
    learned to the hand-crafted class embeddings, 'a photo of a {}.'), at a context moved off its init: vpt's kgcoop
    gives its logits, its knowledge-guided term (the auxiliary loss), the total and the context gradient."""
    name = "kgcoop.safetensors"
    g, meta, model, tp = clip_golden(name)
    assert meta["repo"] == "htyao89/KgCoOp"
    with torch.no_grad():
        tp.ctx.copy_(g["ctx"])
        check(name, model(g["x"]), g["logits"])
    model.train()
    logits = model(g["x"])
    aux = model.auxiliary_loss()
    assert float(g["score"]) > 1e-4  # the term is not zero here
    check(name, aux.detach().reshape(1), json.loads(meta["text"])["weight"] * g["score"])
    loss = F.cross_entropy(logits, g["labels"]) + aux  # what vpt's training step minimises (a batch mean)
    check(name, loss.detach().reshape(1), g["loss"])
    loss.backward()
    check(name, tp.ctx.grad, g["grad_ctx"])


def promptsrc_step(name):
    """vpt's PromptSRC carrying the golden's prompts: eval logits, then one training step's loss and gradients."""
    g, meta, model, tp = clip_golden(name)
    assert meta["repo"] == "muzairkhattak/PromptSRC"
    params = {"ctx": tp.ctx, **{f"text_{i + 1}": p for i, p in enumerate(tp.text_deep)},
              **{f"vision_{j}": p for j, p in tp.vision_prompts.items()}}
    assert sorted(params) == sorted(k[len("prompt_"):] for k in g if k.startswith("prompt_"))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(g[f"prompt_{n}"])
        check(name, model(g["x"]), g["logits"])
    model.train()
    logits = model(g["x"])
    loss = F.cross_entropy(logits, g["labels"]) + model.auxiliary_loss()  # what vpt's training step minimises
    check(name, loss.detach().double().reshape(1), g["loss"].double())
    loss.backward()
    return g, params


def test_promptsrc_equals_promptsrcs_own_code_in_fp32():
    """PromptSRC's CustomCLIP (its trainers/promptsrc.py with its clip/model.py IVLP prompts in both encoders, the
    60-template frozen text features) and one step of its trainer's own forward_backward (CE + the three L_SCL
    terms), run in fp32 (its .half() casts made no-ops): vpt's promptsrc, at the reference defaults (vision_ln_pre,
    promptsrc60), gives the same logits, loss and gradient of every text and image prompt at 1e-5."""
    name = "promptsrc_fp32.safetensors"
    g, params = promptsrc_step(name)
    for n, p in params.items():
        assert float(g[f"grad_{n}"].abs().max()) > 1e-3
        check(name, p.grad, g[f"grad_{n}"])


def test_promptsrc_equals_promptsrcs_own_code_with_its_fp16_casts():
    """The same code as published: its prompts pass .half() in the forward (here fp16-representable, so the forward
    is exact and logits and loss still agree at 1e-5) and the zero-shot logits use the frozen text features rounded
    to fp16; so the gradients agree up to fp16 rounding (1e-3 of the largest entry), not 1e-5."""
    name = "promptsrc.safetensors"
    g, params = promptsrc_step(name)
    for n, p in params.items():
        ref = g[f"grad_{n}"]
        check(name, p.grad, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))


def test_maple_equals_maples_own_custom_clip_in_fp32():
    """MaPLe's CustomCLIP (multimodal-prompt-learning trainers/maple.py, its clip/model.py MaPLe encoders: the text
    prompts of block j coupled to the image prompts by a Linear, the first ones through ln_pre) with 2 tokens from
    'a photo of a' at depth 3, its training forward (the cross-entropy), in fp32 (its .half() casts the identity):
    vpt's maple at the reference defaults gives its logits, loss and the gradients of the context, the deeper text
    prompts and every coupling at 1e-5."""
    name = "maple_fp32.safetensors"
    g, meta, model, tp = clip_golden(name)
    assert meta["repo"] == "muzairkhattak/multimodal-prompt-learning"
    check(name, tp.ctx.detach(), g["ctx"])  # the same init from the same words
    params = {"ctx": tp.ctx, **{f"text_{j + 1}": p for j, p in enumerate(tp.text_deep)}}
    for j, c in enumerate(tp.couplings):
        params.update({f"coupling_{j}.weight": c.weight, f"coupling_{j}.bias": c.bias})
    assert sorted(params) == sorted(k[len("grad_"):] for k in g if k.startswith("grad_"))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(g[n])
        check(name, model(g["x"]), g["logits"])
    model.train()
    loss = F.cross_entropy(model(g["x"]), g["labels"])
    assert model.auxiliary_loss() is None
    check(name, loss.detach().reshape(1), g["loss"])
    loss.backward()
    for n, p in params.items():
        assert float(g[f"grad_{n}"].abs().max()) > 1e-5
        check(name, p.grad, g[f"grad_{n}"])



def test_vpt_recipes_head_starts_as_kmnps_trained_head():
    """The head KMnP/vpt trains (src/models/vit_models.py: its MLP with no hidden layer, special_bias), as its code
    builds it after torch.manual_seed: head.init vpt builds the same tensors, and the VPT paper's recipes use it."""
    from vpt.heads.classification import HeadConfig, LinearHead
    from vpt.recipes import find
    g, meta = load_golden("kmnp_vpt_deep.safetensors")
    C, D = g["train_head_weight"].shape
    torch.manual_seed(int(meta["train_head_seed"]))
    head = LinearHead(D, C, HeadConfig(init="vpt"))
    assert torch.equal(head.fc.weight.detach(), g["train_head_weight"])
    assert torch.equal(head.fc.bias.detach(), g["train_head_bias"])
    torch.manual_seed(int(meta["train_head_seed"]))
    assert not torch.equal(LinearHead(D, C, HeadConfig()).fc.weight.detach(), g["train_head_weight"])
    for recipe in ("vpt_deep_vitb16_in21k", "vpt_shallow_vitb16_in21k", "linear_probe_vitb16_in21k",
                   "full_finetune_vitb16_in21k"):
        assert yaml.safe_load(open(find(recipe)))["model"]["head"]["init"] == "vpt", recipe


def test_promptsrc_training_and_gaussian_prompt_aggregation_equal_promptsrcs_trainer():
    """PromptSRC's own trainer (build_model, then forward_backward once per epoch: its loss, an SGD step, and the
    Gaussian-weighted sum of the model after each epoch, loaded after the last), fp32: vpt's promptsrc trained the same
    way (SGD, the model's end_epoch) has the same epoch weights, per-epoch losses, aggregated prompts and logits."""
    from vpt.prompts.promptsrc import gpa_weights
    name = "promptsrc_gpa_fp32.safetensors"
    g, meta, model, tp = clip_golden(name)
    text = json.loads(meta["text"])
    epochs, lr = int(meta["epochs"]), float(meta["lr"])
    check(name, torch.tensor(gpa_weights(epochs, text["gpa_mean"], text["gpa_std"]), dtype=torch.float64), g["gauss"],
          rtol=1e-12, atol=1e-12)
    params = {"prompt_learner.ctx": tp.ctx, "image_encoder.VPT": tp.vision_prompts["0"]}
    for i in range(1, text["text_depth"]):
        params[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = tp.text_deep[i - 1]
    for i in range(1, text["vision_depth"]):
        params[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = tp.vision_prompts[str(i)]
    assert sorted(params) == sorted(k[len("start."):] for k in g if k.startswith("start."))
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params.values()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(g[f"start.{n}"])
    opt = torch.optim.SGD(list(params.values()), lr=lr)
    model.train()
    for epoch in range(epochs):
        loss = F.cross_entropy(model(g["x"]), g["labels"]) + model.auxiliary_loss()
        check(name, loss.detach().double().reshape(1), g["losses"][epoch:epoch + 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.end_epoch(epoch, epochs)
    for n, p in params.items():
        assert float((g[f"end.{n}"] - g[f"start.{n}"]).abs().max()) > 1e-4  # the prompts moved
        check(name, p.detach(), g[f"end.{n}"])
    model.eval()
    with torch.no_grad():
        check(name, model(g["x"]), g["logits"])


def test_goldens_name_their_reference_and_stay_small():
    """Every golden names the repository and commit that wrote it; tests/data stays under 1 MB (issue #34)."""
    import re
    names = sorted(f for f in os.listdir(DATA) if f.endswith(".safetensors"))
    assert len(names) >= 11
    for f in names:
        meta = load_golden(f)[1]
        assert "/" in meta["repo"] and re.fullmatch(r"[0-9a-f]{40}", meta["commit"]), f
    assert sum(os.path.getsize(os.path.join(DATA, f)) for f in os.listdir(DATA)) < 1_000_000

if __name__ == "__main__":  # the parity table of docs/benchmarks.md: python tests/test_reference_goldens.py
    import inspect
    for fn_name, fn in list(globals().items()):
        if fn_name.startswith("test_"):
            params = inspect.signature(fn).parameters
            marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
            for arg in (marks[0].args[1] if marks else [None]):
                fn(arg) if params else fn()
    for golden, diff in DIFFS.items():
        meta = load_golden(golden)[1]
        print(f"| {golden} | {meta['repo']}@{meta['commit'][:7]} | {diff:.1e} |")
