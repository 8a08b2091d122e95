"""Stratified train/val(/test) splits and few-shot subsets, reproducible from a seed."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import math

import numpy as np

Sample = Tuple[str, int]  # (path, class index)


def _by_class(samples: Sequence[Sample]) -> Dict[int, List[Sample]]:
    groups: Dict[int, List[Sample]] = defaultdict(list)
    for s in sorted(samples):  # sorted: the split doesn't depend on file-system order
        groups[s[1]].append(s)
    return groups


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> Tuple[List[Sample], List[Sample]]:
    """Split off ``fraction`` of every class (at least one image when the class has two or more).

    Returns (kept, held_out). The same samples and seed always give the same split.
    """
    if fraction <= 0:
        return sorted(samples), []
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label, group in sorted(_by_class(samples).items()):
        order = rng.permutation(len(group))
        n_held = int(round(fraction * len(group)))
        n_held = min(max(n_held, 1 if len(group) >= 2 else 0), len(group) - 1)
        held += [group[i] for i in order[:n_held]]
        kept += [group[i] for i in order[n_held:]]
    return sorted(kept), sorted(held)


def few_shot(samples: Sequence[Sample], shots: int, seed: int) -> List[Sample]:
    """k images per class (all of a class that has fewer), chosen with ``seed``."""
    rng = np.random.default_rng(seed + 1_000_003)  # independent of the val split's draws
    out: List[Sample] = []
    for label, group in sorted(_by_class(samples).items()):
        order = rng.permutation(len(group))[:shots]
        out += [group[i] for i in sorted(order)]
    return sorted(out)


def class_counts(samples: Sequence[Sample], num_classes: int) -> List[int]:
    counts = [0] * num_classes
    for _, y in samples:
        counts[y] += 1
    return counts


CLASS_SUBSETS = ("all", "base", "novel")


def base_novel_classes(class_names: Sequence[str]) -> Tuple[List[str], List[str]]:
    """CoOp's base-to-novel split: the first half (rounded up) of the sorted class names is base, the rest novel."""
    names = sorted(class_names)
    if len(names) < 2:
        raise ValueError(f"base-to-novel needs at least 2 classes (one base, one novel), got {len(names)}: {names}")
    m = math.ceil(len(names) / 2)
    return names[:m], names[m:]


def keep_classes(samples: Sequence[Sample], class_names: Sequence[str], keep: Sequence[str]) -> List[Sample]:
    """The samples of the ``keep`` classes, relabelled 0..len(keep)-1 in the order of ``keep``."""
    new = {class_names.index(c): i for i, c in enumerate(keep)}
    return [(p, new[y]) for p, y in samples if y in new]
