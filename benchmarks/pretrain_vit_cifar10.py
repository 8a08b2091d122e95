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

Training runs on vpt's engine (``vpt.engine.Trainer``, the loop every vpt task uses) with this script's
task (``CifarPretrain``): AdamW, per-step warmup + cosine, gradient clipping, bf16 autocast, compile,
checkpoints (``<out>/run_state.pt``) and exact resume come from the engine.

Determinism: the data order of epoch ``e`` comes from the engine's sampler (seeded with ``(seed, e)``), the
augmentation from a generator seeded with ``(seed, e)``, the model has no dropout, and deterministic
algorithms are requested, so a run resumed from ``run_state.pt`` gives the same weights as an
uninterrupted one (same thread count, same machine/library versions).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vpt.backbones.base import sha256_file as _sha256
from vpt.engine import Callback, OptimSection, OutputSection, SchedSection, StepOutput, Task, TrainSection
from vpt.errors import VptError
from vpt.io import atomic_write_text as _atomic_write_text

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
SPLITS = {"train": 5000, "test": 1000}  # images per class

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TAR = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


# --------------------------------------------------------------------------------------------------
# Utilities
# --------------------------------------------------------------------------------------------------
class Logger:
    """Print and append to ``path``; with ``hold``, file lines wait for ``release()`` (a new run's folder is
    the engine's to create: vpt never writes into a folder before it has marked it as a run)."""

    def __init__(self, path: Path | None, hold: bool = False):
        self.path, self.hold, self.pending = path, hold, []

    def __call__(self, msg: str, file_too: bool = True) -> None:
        line = f"[{_dt.datetime.now().strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        print(line, flush=True)
        if file_too and self.path is not None:
            self.pending.append(line)
            if not self.hold:
                self.release()

    def release(self) -> None:
        self.hold = False
        if self.path is not None and self.pending:
            with open(self.path, "a") as f:
                f.write("".join(line + "\n" for line in self.pending))
        self.pending = []


def sha256_file(path: Path) -> str:
    return _sha256(str(path))


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_text(str(path), text)


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


class Pretrained(torch.nn.Module):
    """The timm ViT, with the roles vpt's optimizer reads: timm's ``no_weight_decay()`` tensors (class and
    position tokens) are 'token', every other tensor 'backbone' (1-d ones get no decay either)."""

    def __init__(self, vit: torch.nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit(x)

    def param_roles(self):
        skip = set(self.vit.no_weight_decay())
        return {n: ("backbone", "token") if n[len("vit."):] in skip else ("backbone",)
                for n, _ in self.named_parameters()}

    def save_pretrained(self, directory):  # the engine's per-epoch artifact (best/): the weights
        from safetensors.torch import save_file
        save_file({k: v.detach().cpu().contiguous() for k, v in self.vit.state_dict().items()},
                  os.path.join(directory, "model.safetensors"))


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
@dataclass
class PretrainData:
    limit_train: int | None = None  # smoke runs: a seeded subset of the training images
    limit_test: int | None = None  # smoke runs: a seeded subset of the test images
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    label_smoothing: float = 0.1  # cross-entropy label smoothing (also inside Mixup's soft targets)
    init_sha256: str | None = None  # sha256 of the --init-from weights (None: random init)


@dataclass
class PretrainConfig:
    """A run of this script in the engine's terms (written to <out>/config.yaml; --resume compares it)."""
    task: str = "cifar10_pretrain"
    data: PretrainData = field(default_factory=PretrainData)
    optim: OptimSection = field(default_factory=OptimSection)
    sched: SchedSection = field(default_factory=SchedSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputSection = field(default_factory=OutputSection)


# fields that may change between a run and its --resume (where and how fast, not what is learned)
RESUMABLE_CHANGES = {("output", "dir"), ("train", "device"), ("train", "compile"), ("train", "log_interval"),
                     ("train", "progress"), ("train", "workers")}


def run_config(args, n_train: int) -> PretrainConfig:
    """Map the flags onto the engine's sections. The warmup starts at lr / warmup_steps, so step s of the
    warmup runs at about (s + 1) / warmup_steps of the lr, as this script always did."""
    steps = n_train // args.batch_size  # whole batches only: a constant batch shape
    warmup_steps = int(round(args.warmup_epochs * steps))
    return PretrainConfig(
        data=PretrainData(limit_train=args.limit_train, limit_test=args.limit_test, mixup=args.mixup,
                          cutmix=args.cutmix, label_smoothing=args.label_smoothing, init_sha256=args.init_sha256),
        optim=OptimSection(opt="adamw", lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay,
                           clip_grad=args.clip_grad if args.clip_grad and args.clip_grad > 0 else None),
        sched=SchedSection(sched="cosine", warmup_epochs=args.warmup_epochs, min_lr=args.min_lr,
                           warmup_lr=args.lr / warmup_steps if warmup_steps else 0.0),
        train=TrainSection(epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=EVAL_BATCH,
                           amp_dtype="bfloat16" if args.amp == "bf16" else "float32", compile=bool(args.compile),
                           seed=args.seed, deterministic=True, device=args.device, workers=0,
                           log_interval=args.log_every, progress=False),
        output=OutputSection(dir=str(args.out), save_last=False))


class _Indices(torch.utils.data.Dataset):
    """Sample indices into the in-memory training tensors; each epoch re-seeds the augmentation generator."""

    def __init__(self, task: "CifarPretrain"):
        self.task = task

    def __len__(self) -> int:
        return len(self.task.ytr)

    def __getitem__(self, i: int) -> int:
        return i

    def set_epoch(self, epoch: int) -> None:
        self.task.gen.manual_seed(self.task.cfg.train.seed * 1_000_003 + epoch)


class CifarPretrain(Task):
    """Supervised CIFAR-10 training of the timm ViT, as a task of vpt's engine: the engine runs the loop
    (AdamW, warmup + cosine per step, clipping, bf16 autocast, compile, checkpoints and exact resume); the
    task keeps the data in memory and augments whole batches on the device."""

    name, selection, drop_last = "cifar10_pretrain", "top1", True

    def __init__(self, cfg: PretrainConfig, args, log: Logger):
        super().__init__(cfg)
        self.args, self.log = args, log
        self.gen = torch.Generator()

    def setup(self, run) -> None:
        # the engine claims the run folder only after setup (when the run can start): lines wait until then
        d = self.cfg.data
        data, self.classes = load_arrays(self.args.data_tar, self.args.cache_dir, self.log)
        xtr, ytr = subset(*data["train"], d.limit_train, self.cfg.train.seed)
        self.xte, self.yte = subset(*data["test"], d.limit_test, self.cfg.train.seed)
        self.xtr, self.ytr = xtr.to(run.device), ytr.to(run.device)  # the whole (uint8) set stays on the device
        self.mixer = None
        if d.mixup or d.cutmix:
            from timm.data import Mixup  # random draws from numpy's global RNG: seeded, saved and restored
            from timm.loss import SoftTargetCrossEntropy
            self.soft_ce = SoftTargetCrossEntropy()
            self.mixer = Mixup(mixup_alpha=d.mixup, cutmix_alpha=d.cutmix, label_smoothing=d.label_smoothing,
                               num_classes=len(self.classes))

    def build_model(self, run) -> torch.nn.Module:
        if self.args.init_from is not None:
            vit = load_weights(self.args.init_from)
            vit.train()
        else:
            vit = build_model()
        self.model = Pretrained(vit)
        return self.model

    def train_dataset(self, run):
        return _Indices(self)

    def collate(self, batch):
        return torch.tensor(batch, dtype=torch.long)

    def train_step(self, run, net, idx) -> StepOutput:
        idx = idx.to(run.device)
        xb = augment(to_input(self.xtr[idx]), self.gen)
        yb = self.ytr[idx]
        if self.mixer is not None:
            xb, soft = self.mixer(xb, yb)
            loss = self.soft_ce(net(xb).float(), soft)
        else:
            loss = F.cross_entropy(net(xb).float(), yb, label_smoothing=self.cfg.data.label_smoothing)
        return StepOutput(loss * len(yb), len(yb))  # the engine wants the sum over the batch


class History(Callback):
    """Test top-1 after every epoch (monitoring only: the export is the last epoch), the log line with an
    ETA, the per-epoch history and the wall time; saved in the run state, so --resume keeps them."""

    def __init__(self, task: CifarPretrain, max_epochs_this_run: int | None, budget_min: float | None):
        self.task, self.max_epochs, self.budget_min = task, max_epochs_this_run, budget_min
        self.history: list = []
        self.train_time = 0.0

    def on_train_start(self, run) -> None:
        self.task.log.release()  # the engine has claimed (and locked) the run folder
        self.run_t0, self.start_epoch, self.done_here = time.time(), run.start_epoch, 0

    def on_epoch_end(self, run, epoch, row) -> None:
        t0 = time.time()
        correct, total, te_loss = evaluate(run.model, self.task.xte, self.task.yte)
        ep_s = row["epoch_seconds"] + (time.time() - t0)
        self.train_time += ep_s
        acc = 100.0 * correct / total
        lr = run.optimizer.param_groups[0]["lr"]
        self.history.append({"epoch": epoch, "train_loss": row["train_loss"], "test_top1": acc, "test_loss": te_loss,
                             "lr_last": lr, "img_per_s": row["train_images_per_second"], "epoch_s": ep_s,
                             "elapsed_s": self.train_time})
        self.done_here += 1
        epochs = run.cfg.train.epochs
        remaining = (epochs - epoch) * (time.time() - self.run_t0) / self.done_here
        finish = _dt.datetime.now() + _dt.timedelta(seconds=remaining)
        eta = f" | ETA {fmt_s(remaining)} (~{finish.strftime('%H:%M')})"
        if self.budget_min is not None:
            need = self.train_time + remaining
            eta += (f" est. total {need / 60:.0f} of {self.budget_min:.0f} min budget"
                    f"{' OVER' if need > 60 * self.budget_min else ''}")
        self.task.log(f"epoch {epoch:3d}/{epochs} train_loss {row['train_loss']:.4f} test_top1 {acc:6.2f}% "
                      f"test_loss {te_loss:.4f} lr {lr:.2e} {row['train_images_per_second']:.0f} img/s epoch "
                      f"{ep_s:.0f}s elapsed {fmt_s(self.train_time)}{eta}")
        if self.max_epochs is not None and self.done_here >= self.max_epochs and epoch < epochs:
            run.request_stop(f"--max-epochs-this-run {self.max_epochs}")

    def state_dict(self):
        return {"history": self.history, "train_time_s": self.train_time}

    def load_state_dict(self, state) -> None:
        self.history, self.train_time = list(state["history"]), float(state["train_time_s"])


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
    p.add_argument("--resume", action="store_true", help="resume from <out>/run_state.pt if present")
    p.add_argument("--init-from", type=Path, default=None, metavar="WEIGHTS",
                   help="start from a weights file this script exported (a new schedule from there)")
    p.add_argument("--eval-only", type=Path, default=None, metavar="WEIGHTS",
                   help="evaluate a safetensors weights file on the test set and exit")
    p.add_argument("--model-kwargs", type=json.loads, default=None, metavar="JSON",
                   help="timm kwargs replacing the shipped architecture's, e.g. '{\"embed_dim\": 384, "
                        "\"num_heads\": 6, \"depth\": 12, \"mlp_ratio\": 4}' (benchmarks/scale_study.py)")
    p.add_argument("--weights-name", default=None, help=f"exported file name (default: {WEIGHTS_NAME})")
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


def _check_resume(out: Path, cfg: PretrainConfig) -> None:
    """A changed recipe cannot silently continue someone else's state."""
    import yaml

    from vpt.config import to_dict
    saved = yaml.safe_load((out / "config.yaml").read_text())
    now = to_dict(cfg)
    diff = {f"{sec}.{k}": (saved.get(sec, {}).get(k), v) for sec, fields in now.items() if isinstance(fields, dict)
            for k, v in fields.items() if (sec, k) not in RESUMABLE_CHANGES and saved.get(sec, {}).get(k) != v}
    if diff:
        raise SystemExit(f"refusing to resume {out}: hyper-parameters differ {diff}")


def train(args) -> int:
    from vpt.engine import holds_run
    from vpt.engine import train as engine_train

    setup_determinism(args.seed, args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Logger(out / "train.log", hold=not holds_run(str(out)))  # released once the engine owns the folder
    init = init_record(args.init_from) if args.init_from is not None else None
    args.init_sha256 = init["sha256"] if init else None
    n_train = min(args.limit_train or SPLITS["train"] * 10, SPLITS["train"] * 10)
    cfg = run_config(args, n_train)
    resume = args.resume and holds_run(str(out))
    if resume:
        _check_resume(out, cfg)
    if init:
        log(f"init from {init['path']} sha256 {init['sha256']}"
            + (f" (test top-1 {init['test_top1']:.2f}%)" if init.get("test_top1") is not None else ""))
    cmd = shlex.join([sys.executable] + sys.argv)
    log(f"cmd: {cmd}")
    log(f"{MODEL_NAME} {MODEL_KWARGS} | epochs {args.epochs} | bs {args.batch_size} lr {args.lr} "
        f"wd {args.weight_decay} seed {args.seed} threads {args.threads} device {args.device} amp {args.amp} "
        f"mixup {args.mixup} cutmix {args.cutmix} torch {torch.__version__}")
    task = CifarPretrain(cfg, args, log)
    history = History(task, args.max_epochs_this_run, args.time_budget_min)
    try:
        res = engine_train(task, resume=resume, callbacks=[history], command=cmd)
    except VptError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if res.get("stopped"):
        log(f"stopping after {history.done_here} epoch(s) this run (--max-epochs-this-run); "
            f"run the same command with --resume to continue")
        return 0
    n_params = sum(p.numel() for p in task.model.parameters())
    device = torch.device(args.device)

    # ---- export: weights, then re-evaluate the *file* on the CPU (where --eval-only runs), so that
    # --eval-only reproduces it exactly on any machine ----
    wpath = out / WEIGHTS_NAME
    digest = export_weights(task.model.vit, wpath, task.classes)
    correct, total, te_loss = evaluate(load_weights(wpath), task.xte, task.yte)
    acc = 100.0 * correct / total
    train_time = history.train_time
    mixer = task.mixer
    results = {
        **res,  # the engine's record (config, world size, versions, parameter counts, ...), refined below
        "test_top1": acc,
        "test_correct": correct,
        "n_test": total,
        "test_loss": te_loss,
        "n_train": len(task.ytr),
        "epochs": args.epochs,
        "steps": args.epochs * (len(task.ytr) // args.batch_size),
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
        "classes": task.classes,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "timm": __import__("timm").__version__, "numpy": np.__version__,
                     "safetensors": __import__("safetensors").__version__, "vpt": res["versions"]["vpt"],
                     "vpt_commit": res["versions"].get("vpt_commit")},
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
        "history": history.history,
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
    global MODEL_KWARGS, WEIGHTS_NAME
    args = parse_args(argv)
    saved = MODEL_KWARGS, WEIGHTS_NAME
    MODEL_KWARGS = {**MODEL_KWARGS, **(args.model_kwargs or {})}  # another size of the same recipe
    WEIGHTS_NAME = args.weights_name or WEIGHTS_NAME
    try:
        if args.eval_only is not None:
            return run_eval_only(args)
        return train(args)
    finally:
        MODEL_KWARGS, WEIGHTS_NAME = saved


if __name__ == "__main__":
    sys.exit(main())
