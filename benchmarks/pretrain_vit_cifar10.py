#!/usr/bin/env python3
"""Reproducible, resumable pretraining of a small timm ViT on CIFAR-10 (CPU or one GPU).

The resulting weights are the backbone the visual-prompt-tuning benchmarks start from
(no pretrained ViT weights are available offline).

Train (resumable; re-run the same command with ``--resume`` after an interruption)::

    python3 benchmarks/pretrain_vit_cifar10.py --out runs/pretrain --epochs 20 --resume

On a GPU the whole data set lives in GPU memory and steps run under bf16 autocast; e.g.::

    python3 benchmarks/pretrain_vit_cifar10.py --out runs/pretrain_gpu --device cuda --epochs 200 \
        --batch-size 512 --lr 2e-3 --warmup-epochs 5 --mixup 0.8 --cutmix 1.0 --compile

Continue from an earlier run's weights (a new schedule from those weights; a second stage on a machine
too slow for one long run)::

    python3 benchmarks/pretrain_vit_cifar10.py --out runs/stage2 --init-from runs/pretrain/vit_tiny_cifar10.safetensors \
        --epochs 20 --lr 5e-4 --warmup-epochs 1

Verify a shipped weights file (prints the CIFAR-10 test top-1)::

    python3 benchmarks/pretrain_vit_cifar10.py --eval-only path/to/vit_tiny_cifar10.safetensors

Data: ``cifar10-jpeg.tar.gz`` (image-folder layout ``{train,test}/<class>/NNNN.jpg``) is extracted
once into ``--cache-dir`` and decoded once into uint8 ``.npy`` arrays there; training keeps everything
in memory (on the training device) as tensors and augments batched tensors in torch (no DataLoader
workers).

Determinism: the data order and augmentation of epoch ``e`` come from a generator seeded with
``(seed, e)`` only, the model has no dropout, and deterministic algorithms are requested, so a run
resumed from ``state.pt`` gives the same weights as an uninterrupted one (same thread count, same
machine/library versions).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# Constants other modules rely on (rebuild with ``timm.create_model(MODEL_NAME, **MODEL_KWARGS)``).
# --------------------------------------------------------------------------------------------------
MODEL_NAME = "vit_tiny_patch16_224"
MODEL_KWARGS = dict(
    pretrained=False,
    num_classes=10,
    img_size=32,
    patch_size=4,
    embed_dim=192,
    depth=6,
    num_heads=3,
    mlp_ratio=2,
    global_pool="token",
)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
IMG_SIZE = 32
PAD = 4
EVAL_BATCH = 500  # fixed, independent of --batch-size, so eval numbers are reproducible
WEIGHTS_NAME = "vit_tiny_cifar10.safetensors"
STATE_NAME = "state.pt"
SPLITS = {"train": 5000, "test": 1000}  # images per class

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TAR = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


# --------------------------------------------------------------------------------------------------
# Utilities
# --------------------------------------------------------------------------------------------------
class Logger:
    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, msg: str, file_too: bool = True) -> None:
        line = f"[{_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        print(line, flush=True)
        if file_too and self.path is not None:
            with open(self.path, "a") as f:
                f.write(line + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_np_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600:d}h{(s % 3600) // 60:02d}m{s % 60:02d}s"


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------
def extract_tar(tar_path: Path, cache_dir: Path, log: Logger) -> Path:
    """Extract once into ``cache_dir/extracted`` (marker file makes it idempotent)."""
    root = cache_dir / "extracted"
    marker = root / ".complete"
    if marker.exists():
        return root
    if not tar_path.is_file():
        raise FileNotFoundError(f"CIFAR-10 tarball not found: {tar_path} (use --data-tar)")
    log(f"extracting {tar_path} -> {root}", file_too=False)
    tmp = cache_dir / f"extracted.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tar_path, "r:gz") as tf:
        tf.extractall(tmp, filter="data")
    (tmp / ".complete").write_text(sha256_file(tar_path) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


def load_arrays(tar_path: Path, cache_dir: Path, log: Logger):
    """Return ({split: (x uint8 [N,32,32,3], y int64 [N])}, classes). Cached as .npy."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cls_file = cache_dir / "classes.json"
    files = {s: (cache_dir / f"{s}_x.npy", cache_dir / f"{s}_y.npy") for s in SPLITS}
    if not (cls_file.exists() and all(a.exists() and b.exists() for a, b in files.values())):
        from PIL import Image

        root = extract_tar(tar_path, cache_dir, log)
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
        if classes != test_classes or len(classes) != 10:
            raise RuntimeError(f"unexpected class folders: {classes} / {test_classes}")
        for split, per_class in SPLITS.items():
            t0 = time.time()
            xs, ys = [], []
            for ci, c in enumerate(classes):
                paths = sorted((root / split / c).glob("*.jpg"))
                if len(paths) != per_class:
                    raise RuntimeError(f"{split}/{c}: {len(paths)} images, expected {per_class}")
                for p in paths:
                    with Image.open(p) as im:
                        a = np.asarray(im.convert("RGB"), dtype=np.uint8)
                    if a.shape != (IMG_SIZE, IMG_SIZE, 3):
                        raise RuntimeError(f"{p}: shape {a.shape}")
                    xs.append(a)
                    ys.append(ci)
            x = np.stack(xs)
            y = np.asarray(ys, dtype=np.int64)
            atomic_np_save(files[split][0], x)
            atomic_np_save(files[split][1], y)
            log(f"decoded {split}: {x.shape} in {time.time() - t0:.1f}s", file_too=False)
        atomic_write_text(cls_file, json.dumps(classes) + "\n")
    classes = json.loads(cls_file.read_text())
    data = {}
    for split, (fx, fy) in files.items():
        x, y = np.load(fx), np.load(fy)
        n = SPLITS[split] * len(classes)
        if x.shape != (n, IMG_SIZE, IMG_SIZE, 3) or x.dtype != np.uint8 or y.shape != (n,):
            raise RuntimeError(f"corrupt cache {fx}: {x.shape} {x.dtype}; delete {cache_dir}")
        data[split] = (torch.from_numpy(x), torch.from_numpy(y))
    return data, classes


_MEAN_T = torch.tensor(MEAN).view(1, 3, 1, 1)
_STD_T = torch.tensor(STD).view(1, 3, 1, 1)


def to_input(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float32 NCHW (on x_u8's device)."""
    x = x_u8.permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(_MEAN_T.to(x.device)).div_(_STD_T.to(x.device)).contiguous()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Batched random crop (reflect pad 4) + horizontal flip on a float NCHW batch. The random draws come
    from the CPU generator ``gen`` on every device, so a GPU run sees the same crops as a CPU run."""
    b, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (PAD, PAD, PAD, PAD), mode="reflect")
    oy = torch.randint(0, 2 * PAD + 1, (b,), generator=gen).to(dev)
    ox = torch.randint(0, 2 * PAD + 1, (b,), generator=gen).to(dev)
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = (oy[:, None] + ar_h[None, :])  # [B,H]
    cols = ox[:, None] + ar_w[None, :]  # [B,W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # flip == reversed column order
    bi = torch.arange(b, device=dev)[:, None, None]
    out = xp[bi, :, rows[:, :, None], cols[:, None, :]]  # [B,H,W,C] (advanced dims first)
    return out.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# Model / optimisation
# --------------------------------------------------------------------------------------------------
def build_model() -> torch.nn.Module:
    import timm

    return timm.create_model(MODEL_NAME, **MODEL_KWARGS)


def param_groups(model: torch.nn.Module, weight_decay: float):
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, total: int, warmup: int, base: float, min_lr: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * min(1.0, t)))


def autocast(device: torch.device, amp: str):
    """bf16 autocast on the training device, or nothing (fp32)."""
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, x_u8: torch.Tensor, y: torch.Tensor) -> tuple[int, int, float]:
    """Returns (correct, total, mean CE loss); runs in fp32 on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum = 0, 0.0
    for i in range(0, len(y), EVAL_BATCH):
        logits = model(to_input(x_u8[i : i + EVAL_BATCH].to(device)))
        yb = y[i : i + EVAL_BATCH].to(device)
        correct += int((logits.argmax(1) == yb).sum())
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
    model.train(was_training)
    return correct, len(y), loss_sum / len(y)


def export_weights(model: torch.nn.Module, path: Path, classes: list[str]) -> str:
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes the metadata map in hash order, so several keys
    # would make the file bytes (and its sha256) differ between otherwise identical exports.
    meta = {"vpt": json.dumps({"model_name": MODEL_NAME, "model_kwargs": MODEL_KWARGS,
                               "classes": classes, "mean": MEAN, "std": STD}, sort_keys=True)}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(sd, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return sha256_file(path)


def load_weights(path: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = build_model()
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()
    return model


def results_beside(weights: Path) -> Path:
    """The training record of a weights file: <stem>.json beside a shipped file (vpt/weights/), else the
    run folder's results.json (which may not exist)."""
    res = weights.with_suffix(".json")
    return res if res.exists() else weights.parent / "results.json"


def init_record(path: Path) -> dict:
    """What a run started from: the weights file, its sha256, and (if its results file is beside it)
    that run's accuracy, epochs, wall time and command, so a staged recipe stays traceable."""
    from safetensors import safe_open

    if not path.is_file():
        raise SystemExit(f"--init-from {path}: no such file; pass the .safetensors a previous run of this "
                         "script exported (<out>/vit_tiny_cifar10.safetensors)")
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("vpt", "{}"))
    if meta.get("model_name") != MODEL_NAME or meta.get("model_kwargs") != MODEL_KWARGS:
        raise SystemExit(f"--init-from {path}: made for {meta.get('model_name')} {meta.get('model_kwargs')}, "
                         f"not this script's {MODEL_NAME} {MODEL_KWARGS}; start from a file this script exported")
    rec = {"path": str(path), "sha256": sha256_file(path)}
    res = results_beside(path)
    if res.exists():
        r = json.loads(res.read_text())
        if r.get("weights_sha256") == rec["sha256"]:
            rec.update({k: r.get(k) for k in ("test_top1", "epochs", "train_wall_time_s", "command", "init")})
    return rec


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------
# Hyper-parameters that must match when resuming.
RESUME_KEYS = ("epochs", "batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs",
               "label_smoothing", "clip_grad", "seed", "limit_train", "limit_test", "mixup", "cutmix", "amp",
               "init_sha256")
NEW_KEY_DEFAULTS = {"mixup": 0.0, "cutmix": 0.0, "amp": "fp32", "init_sha256": None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-tar", type=Path, default=DEFAULT_TAR,
                   help="cifar10-jpeg.tar.gz (default: <repo>/../shared/data/)")
    p.add_argument("--cache-dir", type=Path, default=Path("~/.cache/vpt/cifar10"),
                   help="extraction + decoded .npy cache")
    p.add_argument("--out", type=Path, default=None, help="output folder (required for training)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-5, help="final LR of the cosine decay")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (timm Mixup; 0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (timm Mixup; 0: off)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (cuda if available)")
    p.add_argument("--amp", choices=["auto", "fp32", "bf16"], default="auto",
                   help="training precision; auto: bf16 on CUDA, fp32 on CPU (evaluation runs fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training model")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="only used to log an ETA vs. this budget; changes nothing")
    p.add_argument("--resume", action="store_true", help="resume from <out>/state.pt if present")
    p.add_argument("--init-from", type=Path, default=None, metavar="WEIGHTS",
                   help="start from a weights file this script exported (a new schedule from there)")
    p.add_argument("--eval-only", type=Path, default=None, metavar="WEIGHTS",
                   help="evaluate a safetensors weights file on the test set and exit")
    p.add_argument("--log-every", type=int, default=100,
                   help="progress line to stdout every N steps (0: off)")
    # hidden, for smoke tests
    p.add_argument("--limit-train", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--limit-test", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-epochs-this-run", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data_tar = args.data_tar.expanduser().resolve()
    args.cache_dir = args.cache_dir.expanduser().resolve()
    if args.out is not None:
        args.out = args.out.expanduser().resolve()
    if args.init_from is not None:
        args.init_from = args.init_from.expanduser().resolve()
    if args.eval_only is None and args.out is None:
        p.error("--out is required for training")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    if args.amp == "auto":
        args.amp = "bf16" if args.device.startswith("cuda") else "fp32"
    if (args.mixup or args.cutmix) and args.batch_size % 2:
        p.error("--mixup / --cutmix need an even --batch-size")
    return args


def setup_determinism(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def subset(x, y, n, seed):
    if n is None or n >= len(y):
        return x, y
    g = torch.Generator().manual_seed(seed + 12345)
    idx = torch.randperm(len(y), generator=g)[:n].sort().values
    return x[idx].contiguous(), y[idx].contiguous()


def run_eval_only(args) -> int:
    setup_determinism(args.seed, args.threads)
    log = Logger(None)
    data, classes = load_arrays(args.data_tar, args.cache_dir, log)
    xt, yt = subset(*data["test"], args.limit_test, args.seed)
    path = args.eval_only.expanduser().resolve()
    model = load_weights(path)
    t0 = time.time()
    correct, total, loss = evaluate(model, xt, yt)
    acc = 100.0 * correct / total
    print(f"weights: {path}")
    print(f"sha256: {sha256_file(path)}")
    print(f"test top-1: {acc:.2f}% ({correct}/{total}), test loss {loss:.4f}, "
          f"{total / (time.time() - t0):.0f} img/s")
    res = results_beside(path)
    if res.exists():
        r = json.loads(res.read_text())
        if r.get("test_correct") is not None and r.get("n_test") == total:
            same = r["test_correct"] == correct
            print(f"{res.name} test top-1: {r['test_top1']:.2f}% -> {'MATCH' if same else 'MISMATCH'}")
            return 0 if same else 1
    return 0


def train(args) -> int:
    setup_determinism(args.seed, args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_NAME
    if state_path.exists() and not args.resume:
        print(f"error: {state_path} exists; pass --resume to continue it or use another --out",
              file=sys.stderr)
        return 2
    log = Logger(out / "train.log")

    device = torch.device(args.device)
    data, classes = load_arrays(args.data_tar, args.cache_dir, log)
    xtr, ytr = subset(*data["train"], args.limit_train, args.seed)
    xte, yte = subset(*data["test"], args.limit_test, args.seed)
    xtr, ytr = xtr.to(device), ytr.to(device)  # the whole (uint8) training set stays on the device
    n_train = len(ytr)
    steps_per_epoch = n_train // args.batch_size  # drop_last: constant batch shape
    if steps_per_epoch < 1:
        raise ValueError("batch size larger than training set")
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(round(args.warmup_epochs * steps_per_epoch))

    init = None
    if args.init_from is not None:
        init = init_record(args.init_from)
        model = load_weights(args.init_from)
        log(f"init from {init['path']} sha256 {init['sha256']}"
            + (f" (test top-1 {init['test_top1']:.2f}%)" if init.get("test_top1") is not None else ""))
    else:
        model = build_model()
    model = model.to(device)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                            betas=(0.9, 0.999), eps=1e-8)
    args.init_sha256 = init["sha256"] if init else None
    hp = {k: getattr(args, k) for k in RESUME_KEYS}
    start_epoch, step, history, train_time = 0, 0, [], 0.0

    if args.resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        saved = {**NEW_KEY_DEFAULTS, **st["hparams"]}  # states written before these options existed
        diff = {k: (saved.get(k), v) for k, v in hp.items() if saved.get(k) != v}
        if diff:
            raise SystemExit(f"refusing to resume {state_path}: hyper-parameters differ {diff}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["rng"]["torch"])
        np.random.set_state(st["rng"]["numpy"])
        start_epoch, step = st["epoch"], st["step"]
        history, train_time = st["history"], st["train_time_s"]
        log(f"resumed from {state_path} at epoch {start_epoch}, step {step}")

    mixer = None
    if args.mixup or args.cutmix:
        from timm.data import Mixup  # random draws from numpy's global RNG: seeded, saved and restored
        from timm.loss import SoftTargetCrossEntropy
        soft_ce = SoftTargetCrossEntropy()
        mixer = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.label_smoothing,
                      num_classes=len(classes))
    net = torch.compile(model) if args.compile else model
    n_params = sum(p.numel() for p in model.parameters())
    cmd = shlex.join([sys.executable] + sys.argv)
    log(f"cmd: {cmd}")
    log(f"{MODEL_NAME} {MODEL_KWARGS} params={n_params} | train {n_train} test {len(yte)} | "
        f"epochs {args.epochs} x {steps_per_epoch} steps, warmup {warmup_steps} steps | "
        f"bs {args.batch_size} lr {args.lr} wd {args.weight_decay} seed {args.seed} "
        f"threads {args.threads} device {device} amp {args.amp} mixup {args.mixup} cutmix {args.cutmix} "
        f"torch {torch.__version__}")

    run_t0 = time.time()
    epochs_this_run = 0
    for epoch in range(start_epoch, args.epochs):
        if args.max_epochs_this_run is not None and epochs_this_run >= args.max_epochs_this_run:
            log(f"stopping after {epochs_this_run} epoch(s) this run (--max-epochs-this-run)")
            return 0
        ep_t0 = time.time()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        perm = torch.randperm(n_train, generator=gen)
        model.train()
        loss_t = torch.zeros((), dtype=torch.float64, device=device)  # on the device: no host sync per step
        seen = 0
        for i in range(steps_per_epoch):
            lr = lr_at(step, total_steps, warmup_steps, args.lr, args.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size].to(device)
            xb = augment(to_input(xtr[idx]), gen)
            yb = ytr[idx]
            with autocast(device, args.amp):
                if mixer is not None:
                    xb, soft = mixer(xb, yb)
                    loss = soft_ce(net(xb).float(), soft)
                else:
                    loss = F.cross_entropy(net(xb).float(), yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad and args.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            opt.step()
            step += 1
            loss_t += loss.detach().double() * len(yb)
            seen += len(yb)
            if args.log_every and (i + 1) % args.log_every == 0:
                el = time.time() - ep_t0
                log(f"  ep {epoch + 1} step {i + 1}/{steps_per_epoch} loss {loss_t.item() / seen:.4f} "
                    f"lr {lr:.2e} {seen / el:.0f} img/s", file_too=False)
        loss_sum = loss_t.item()
        if not math.isfinite(loss_sum):
            log(f"non-finite loss in epoch {epoch + 1}; aborting (state.pt holds the last finished epoch)")
            return 3
        train_s = time.time() - ep_t0
        correct, total, te_loss = evaluate(model, xte, yte)
        ep_s = time.time() - ep_t0
        train_time += ep_s
        acc = 100.0 * correct / total
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "test_top1": acc,
               "test_loss": te_loss, "lr_last": lr, "img_per_s": seen / train_s,
               "epoch_s": ep_s, "elapsed_s": train_time}
        history.append(rec)
        eta = ""
        done_here = epoch + 1 - start_epoch
        remaining = (args.epochs - epoch - 1) * (time.time() - run_t0) / done_here
        finish = _dt.datetime.now() + _dt.timedelta(seconds=remaining)
        eta = f" | ETA {fmt_s(remaining)} (~{finish.strftime('%H:%M')})"
        if args.time_budget_min is not None:
            need = train_time + remaining
            eta += (f" est. total {need / 60:.0f} of {args.time_budget_min:.0f} min budget"
                    f"{' OVER' if need > 60 * args.time_budget_min else ''}")
        log(f"epoch {epoch + 1:3d}/{args.epochs} train_loss {rec['train_loss']:.4f} "
            f"test_top1 {acc:6.2f}% test_loss {te_loss:.4f} lr {lr:.2e} "
            f"{rec['img_per_s']:.0f} img/s epoch {ep_s:.0f}s elapsed {fmt_s(train_time)}{eta}")
        atomic_torch_save({
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
            "hparams": hp,
            "history": history,
            "train_time_s": train_time,
            "model_name": MODEL_NAME,
            "model_kwargs": MODEL_KWARGS,
            "classes": classes,
        }, state_path)
        epochs_this_run += 1

    # ---- export: weights, then re-evaluate the *file* on the CPU (where --eval-only runs), so that
    # --eval-only reproduces it exactly on any machine ----
    wpath = out / WEIGHTS_NAME
    digest = export_weights(model, wpath, classes)
    correct, total, te_loss = evaluate(load_weights(wpath), xte, yte)
    acc = 100.0 * correct / total
    results = {
        "test_top1": acc,
        "test_correct": correct,
        "n_test": total,
        "test_loss": te_loss,
        "n_train": n_train,
        "epochs": args.epochs,
        "steps": step,
        "hparams": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "optimizer": "AdamW(betas=(0.9,0.999), eps=1e-8), no decay on bias/norm/pos_embed/cls_token",
        "schedule": "per-step linear warmup + cosine to min_lr",
        "augmentation": "random crop 32 (reflect pad 4) + horizontal flip"
                        + (f" + timm Mixup(mixup_alpha={args.mixup}, cutmix_alpha={args.cutmix})" if mixer else ""),
        "mean": MEAN,
        "std": STD,
        "eval_batch": EVAL_BATCH,
        "model_name": MODEL_NAME,
        "model_kwargs": MODEL_KWARGS,
        "n_params": n_params,
        "classes": classes,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "timm": __import__("timm").__version__, "numpy": np.__version__,
                     "safetensors": __import__("safetensors").__version__},
        "device": {"type": device.type, "threads": args.threads, "cpu_count": os.cpu_count(),
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "amp": args.amp, "compile": bool(args.compile),
                   "processor": platform.processor() or platform.machine(),
                   "platform": platform.platform()},
        "command": cmd,
        "init": init,
        "train_wall_time_s": train_time,
        "total_train_wall_time_s": train_time + _chain_time(init),
        "weights": WEIGHTS_NAME,
        "weights_sha256": digest,
        "data_tar": str(args.data_tar),
        "data_tar_sha256": sha256_file(args.data_tar) if args.data_tar.is_file() else None,
        "history": history,
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    log(f"exported {wpath} sha256 {digest} | test top-1 {acc:.2f}% ({correct}/{total}) | "
        f"train wall time {fmt_s(train_time)}")
    return 0


def _chain_time(init: dict | None) -> float:
    """Training wall time of the runs this one started from (0 if unknown or none)."""
    t = 0.0
    while init:
        t += init.get("train_wall_time_s") or 0.0
        init = init.get("init")
    return t


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.eval_only is not None:
        return run_eval_only(args)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
