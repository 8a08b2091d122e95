"""Fixtures only; shared helpers (tiny folders, tiny models, the backbone x prompt matrix) are in helpers.py."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import helpers  # noqa: E402

# Under pytest-xdist (the suite's default, one worker per core) each worker gets one thread, so workers
# don't oversubscribe the cores; a plain single-process run keeps up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def matrix():
    """The backbone x prompt matrix (helpers.Matrix): each tiny backbone family built once per session and
    shared by the contract, fast-path, peer-library and drop-in tests."""
    return helpers.MATRIX


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
    return helpers.make_image_folder(tmp_path / "data")
