import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """One torch thread for the test: small tensors on a busy machine spend ~20x the time syncing two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_clip():
    from un2clip.models.presets import build_tiny_clip

    return build_tiny_clip()


@pytest.fixture(scope="session")
def tiny_decoder():
    from un2clip.models.presets import build_tiny_decoder

    return build_tiny_decoder()
