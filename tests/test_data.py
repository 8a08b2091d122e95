"""Data: folders, CSVs, splits, few-shot, image formats, corrupt files, transforms."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_image_folder
from vpt.data import (CorruptImageError, DataError, EvalTransform, ImageDataset, TrainTransform, collate, few_shot,
                      load_image, load_splits, stratified_split)
from vpt.backbones.base import DataConfig
from vpt.tasks.classification import AugmentSection


def test_split_folders_and_class_order(tmp_path):
    make_image_folder(tmp_path / "train", classes=("b", "a", "c"), per_class=5)
    make_image_folder(tmp_path / "test", classes=("a", "c"), per_class=2, seed=1)
    s = load_splits(str(tmp_path), val_fraction=0.2, split_seed=0)
    assert s.class_names == ["a", "b", "c"]
    assert len(s.train) == 12 and len(s.val) == 3 and len(s.test) == 4
    assert {y for _, y in s.val} == {0, 1, 2}  # stratified: one per class
    assert not set(s.train) & set(s.val)
    assert {y for _, y in s.test} == {0, 2}
    make_image_folder(tmp_path / "val", classes=("zz",), per_class=1)
    with pytest.raises(DataError, match="classes that .* lacks"):
        load_splits(str(tmp_path))


def test_stratified_split_and_few_shot_are_seeded():
    samples = [(f"{c}/{i}", c) for c in range(4) for i in range(20)]
    kept, held = stratified_split(samples, 0.25, seed=3)
    assert len(held) == 20 and sorted(kept + held) == sorted(samples)
    assert [sum(y == c for _, y in held) for c in range(4)] == [5, 5, 5, 5]
    assert stratified_split(samples, 0.25, seed=3) == (kept, held)
    assert stratified_split(samples, 0.25, seed=4)[1] != held
    shots = few_shot(kept, 2, seed=0)
    assert [sum(y == c for _, y in shots) for c in range(4)] == [2, 2, 2, 2]
    assert set(shots) <= set(kept) and few_shot(kept, 2, seed=0) == shots


def test_few_shot_and_test_fraction_in_load_splits(tmp_path):
    make_image_folder(tmp_path, per_class=10)
    s = load_splits(str(tmp_path), val_fraction=0.2, test_fraction=0.2, shots=3, split_seed=1)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 6, 6)
    assert not (set(s.train) | set(s.val)) & set(s.test)


def test_csv(tmp_path):
    make_image_folder(tmp_path / "imgs", per_class=4)
    rows = ["path,label,split"]
    for c in ("cat", "dog", "frog"):
        for i in range(4):
            rows.append(f"imgs/{c}/{i:03d}.png,{c},{'test' if i == 3 else 'train'}")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(str(tmp_path / "d.csv"), val_fraction=0.34)
    assert s.class_names == ["cat", "dog", "frog"]
    assert (len(s.train), len(s.val), len(s.test)) == (6, 3, 3)
    assert all(os.path.isfile(p) for p, _ in s.train)
    (tmp_path / "bad.csv").write_text("file,cls\nx.png,a\n")
    with pytest.raises(DataError, match="'path' and 'label'"):
        load_splits(str(tmp_path / "bad.csv"))


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_splits(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_splits(str(tmp_path / "empty"))
    make_image_folder(tmp_path / "one", classes=("cat",), per_class=3)
    with pytest.raises(DataError, match="at least two classes"):
        load_splits(str(tmp_path / "one"))
    make_image_folder(tmp_path / "hole", per_class=2)
    (tmp_path / "hole" / "zebra").mkdir()
    (tmp_path / "hole" / "zebra" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="zebra.*has no images"):
        load_splits(str(tmp_path / "hole"))


def test_formats_load_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    files = {
        "a.jpg": Image.fromarray(rgb), "b.png": Image.fromarray(rgb), "c.webp": Image.fromarray(rgb),
        "d.png": Image.fromarray(rgb[..., 0]),  # grayscale L
        "e.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),  # RGBA
        "f.png": Image.fromarray(rgb).convert("P"),  # palette
        "g.png": Image.fromarray((rgb[..., 0].astype(np.uint16) * 200)),  # 16-bit grayscale
    }
    for name, img in files.items():
        img.save(tmp_path / name)
        out = load_image(str(tmp_path / name))
        assert out.mode == "RGB" and out.size == (24, 20), name
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "b.png"))), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "e.png"))), rgb)


def test_corrupt_and_non_image_files(tmp_path):
    root = make_image_folder(tmp_path, per_class=3)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = tmp_path / "dog" / "000.png"
    (tmp_path / "dog" / "trunc.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "frog" / "readme.txt").write_text("hello")
    s = load_splits(root, val_fraction=0)
    assert len(s.train) == 11 and s.ignored_files == 1
    tf = EvalTransform(DataConfig(input_size=(3, 16, 16)))
    ds = ImageDataset(s.train, tf)
    x, y, idx, skipped = collate([ds[i] for i in range(len(ds))])
    assert skipped == 2 and x.shape == (9, 3, 16, 16) and len(y) == len(idx) == 9
    assert collate([None, None])[0] is None
    strict = ImageDataset(s.train, tf, skip_corrupt=False)
    bad = [i for i, (p, _) in enumerate(s.train) if p.endswith("broken.jpg")][0]
    with pytest.raises(CorruptImageError, match="broken.jpg.*skip_corrupt"):
        strict[bad]


def test_eval_transform_matches_timm():
    """Evaluation preprocessing is exactly timm's eval transform for the backbone's data config."""
    from timm.data import create_transform
    cfg = DataConfig(input_size=(3, 32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bicubic",
                     crop_pct=0.875)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (45, 60, 3), dtype=np.uint8))
    ours = EvalTransform(cfg)(img)
    theirs = create_transform(input_size=cfg.input_size, is_training=False, mean=cfg.mean, std=cfg.std,
                              interpolation=cfg.interpolation, crop_pct=cfg.crop_pct)(img)
    torch.testing.assert_close(ours, theirs)


def test_train_transform_is_seeded_per_sample():
    cfg = DataConfig(input_size=(3, 24, 24), mean=(0.5,) * 3, std=(0.5,) * 3)
    tf = TrainTransform(cfg, AugmentSection(color_jitter=0.4))
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    a, b, c = tf(img, 7), tf(img, 7), tf(img, 8)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
