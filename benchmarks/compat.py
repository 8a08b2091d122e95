"""Compatibility sweep: every timm ViT-family model and every open_clip config with a plain ViT tower,
built tiny with random weights, either passes the core contracts or is refused with a clear reason.

    python benchmarks/compat.py --out benchmarks/results/compat.json

Per model: zero prompts == library output (exact), vpt_deep / vpt_prefix / pixel_pad forward + backward
with gradients on every prompt tensor only, prompts stripped before pooling. A BackboneError is a
refusal (its message is recorded); any other exception is a failure.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

import vpt  # noqa: E402
from vpt.backbones import BackboneError, create_backbone  # noqa: E402
from vpt.version import source_commit  # noqa: E402

TIMM_PATTERNS = ["vit_*", "deit*", "eva*", "*dinov2*", "*siglip*"]
TINY = [dict(embed_dim=64, depth=2, num_heads=2), dict(depth=2)]  # tried in order; never full size (memory)
MAX_PARAMS = 150e6  # a model that stays larger than this once shrunk is skipped, not built (2-core, 24 GB CI box)
CLIP_TEXT = dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)


class _CannotShrink(Exception):
    pass


def check(adapter, kinds=("vpt_deep", "vpt_prefix", "pixel_pad")):
    """Run the contracts; returns {kind: 'ok' | 'refused: ...'}; raises on a broken contract."""
    size = adapter.data_config().input_size
    x = torch.randn(2, *size)
    out = {}
    plain = vpt.create_model(adapter)
    with torch.no_grad():
        plain_feats = plain.forward_features(x)
        pooled = plain.forward_head(plain_feats, pre_logits=True)
        lib = adapter.model
        ref = lib.encode_image(x, normalize=False) if adapter.library == "open_clip" else lib.forward_head(lib.forward_features(x), pre_logits=True)
    if not torch.equal(pooled, ref):
        raise AssertionError(f"zero-prompt output differs from the library by {(pooled - ref).abs().max():.3g}")
    out["identity"] = "ok"
    for kind in kinds:
        prompt = {"kind": kind, "width": 8} if kind == "pixel_pad" else {"kind": kind, "num_tokens": 2}
        try:
            m = vpt.create_model(adapter, prompt=prompt, num_classes=3)
        except BackboneError as e:
            out[kind] = f"refused: {e}"
            continue
        m.train()
        feats = m.forward_features(x)
        if feats.shape != plain_feats.shape:
            raise AssertionError(f"{kind}: features {tuple(feats.shape)} != unprompted {tuple(plain_feats.shape)}: "
                                 f"prompt tokens were not stripped")
        m.forward_head(feats).sum().backward()
        for n, p in m.named_parameters():
            if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all()):
                raise AssertionError(f"{kind}: {n} has no finite gradient")
            if not p.requires_grad and not n.startswith("backbone."):
                raise AssertionError(f"{kind}: {n} is frozen but is not a backbone parameter")
        if any(p.requires_grad for p in m.backbone.parameters()):
            raise AssertionError(f"{kind}: backbone parameter is trainable")
        out[kind] = "ok"
    return out


def build_timm(name):
    last = None
    for kw in TINY:
        try:
            return create_backbone(f"timm:{name}", pretrained=False, model_kwargs=kw), kw
        except BackboneError:
            raise
        except Exception as e:  # these kwargs don't apply to this architecture: try fewer
            last = e
    raise last


def build_open_clip(name, cfg):
    vc = dict(cfg["vision_cfg"])
    vc.update(layers=2, width=64, head_width=32)
    for k in ("attentional_pool",):
        vc.pop(k, None)
    kw = dict(embed_dim=32, vision_cfg=vc, text_cfg=CLIP_TEXT)
    return create_backbone(f"open_clip:{name}", pretrained=False, model_kwargs=kw), kw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/compat.json")
    ap.add_argument("--limit", type=int, default=0, help="check only the first N models of each library (smoke test)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    import open_clip
    import timm
    from open_clip.factory import get_model_config

    rows = []
    names = timm.list_models(TIMM_PATTERNS)
    clip_names = []
    for n in open_clip.list_models():
        c = get_model_config(n) or {}
        vc = c.get("vision_cfg", {})
        if not vc.get("timm_model_name") and isinstance(vc.get("layers", 0), int) and vc.get("patch_size"):
            clip_names.append(n)
    if args.limit:
        names, clip_names = names[:args.limit], clip_names[:args.limit]
    t0 = time.time()
    for lib, todo in (("timm", names), ("open_clip", clip_names)):
        for name in todo:
            row = {"library": lib, "model": name}
            adapter = None
            try:
                try:
                    adapter, kw = build_timm(name) if lib == "timm" else build_open_clip(name, get_model_config(name))
                except BackboneError:
                    raise
                except Exception as e:  # the shrinking kwargs don't fit this architecture: not a vpt verdict
                    raise _CannotShrink(f"{type(e).__name__}: {e}"[:300]) from None
                row["model_kwargs"] = kw
                row["adapter"] = type(adapter).__name__
                n_params = sum(p.numel() for p in adapter.parameters())
                if n_params > MAX_PARAMS:
                    row.update(status="skipped", reason=f"{n_params / 1e6:.0f}M parameters even when shrunk")
                elif adapter.token_refusal:
                    row.update(status="refused", reason=adapter.token_refusal, pixel=check(adapter, ("pixel_pad",)))
                else:
                    res = check(adapter)
                    row.update(status="ok", checks=res)
            except BackboneError as e:
                row.update(status="refused", reason=str(e))
            except _CannotShrink as e:
                row.update(status="skipped", reason=f"cannot be built tiny: {e}")
            except Exception as e:
                row.update(status="failed", error=f"{type(e).__name__}: {e}"[:500],
                           where=traceback.format_exc().splitlines()[-3][:300])
            del adapter
            gc.collect()
            rows.append(row)
            print(f"{lib:9s} {name:60s} {row['status']}", flush=True)
    counts = {}
    for r in rows:
        key = (r["library"], r["status"])
        counts["/".join(key)] = counts.get("/".join(key), 0) + 1
    prefix_refused = sum(1 for r in rows if r.get("checks", {}).get("vpt_prefix", "").startswith("refused"))
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "versions": {"vpt": vpt.__version__, "vpt_commit": source_commit(),
                     "torch": torch.__version__, "timm": timm.__version__,
                     "open_clip": open_clip.__version__, "python": platform.python_version()},
        "device": "cpu", "seconds": round(time.time() - t0, 1),
        "counts": counts, "token_ok_but_prefix_refused": prefix_refused, "models": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(counts), f"prefix refused on token-ok models: {prefix_refused}")
    return 0 if not any(r["status"] == "failed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
