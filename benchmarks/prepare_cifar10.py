"""Make an image folder from the CIFAR-10 JPEG archive: a stratified subset with train/ and test/ splits.

    python benchmarks/prepare_cifar10.py --out ~/.cache/vpt/cifar10-small --train-per-class 100 --test-per-class 50

Reads ../shared/data/cifar10-jpeg.tar.gz (or --tar). The first N files of each class (sorted names) are
taken, so the subset is the same on every machine. Nothing is written into the repository.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TAR = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "cifar10-jpeg.tar.gz"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tar", default=DEFAULT_TAR)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=50)
    args = ap.parse_args(argv)
    if not os.path.isfile(args.tar):
        sys.exit(f"error: CIFAR-10 archive not found at {args.tar}; pass --tar PATH/cifar10-jpeg.tar.gz")
    out = os.path.expanduser(args.out)
    want = {"train": args.train_per_class, "test": args.test_per_class}
    chosen = {}
    with tarfile.open(args.tar) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")),
                         key=lambda m: m.name)
        for m in members:
            parts = m.name.split("/")
            split, cls = parts[-3], parts[-2]
            if split not in want:
                continue
            bucket = chosen.setdefault((split, cls), [])
            if len(bucket) < want[split]:
                bucket.append(m)
        n = 0
        for (split, cls), ms in sorted(chosen.items()):
            d = os.path.join(out, split, cls)
            os.makedirs(d, exist_ok=True)
            for m in ms:
                dst = os.path.join(d, os.path.basename(m.name))
                if not os.path.exists(dst):
                    with tar.extractfile(m) as src, open(dst + ".tmp", "wb") as f:
                        f.write(src.read())
                    os.replace(dst + ".tmp", dst)
                n += 1
    print(f"{out}: {n} images, {len({c for _, c in chosen})} classes, splits {sorted(want)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
