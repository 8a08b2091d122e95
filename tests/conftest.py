import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# A ViT small enough for CPU tests: 32 px, patch 8 -> 16 patches, width 32, 2 blocks.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY_VIT_NAME = "timm:vit_tiny_patch16_224"


def make_image_folder(root, classes=("cat", "dog", "frog"), per_class=6, size=32, seed=0, fmt="png"):
    """Write a small image folder root/<class>/*.{fmt}; each class has its own colour so it is learnable."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for ci, c in enumerate(classes):
        d = os.path.join(root, c)
        os.makedirs(d, exist_ok=True)
        base = np.zeros(3)
        base[ci % 3] = 200
        for i in range(per_class):
            arr = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(os.path.join(d, f"{i:03d}.{fmt}"))
    return str(root)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster on a shared, busy CPU; restored after.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "data")
