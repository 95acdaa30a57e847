"""Shared test set-up: the `gpu` marker skips without CUDA; the `one_thread` and `no_tf32` fixtures."""
import pytest
import torch

from tests.helpers import tf32_off


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread, then restore the setting: hundreds of tiny CNN steps are faster without
    thread hand-offs, and far faster on a busy machine (identity test: 19 s vs 87 s at load average 5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_tf32():
    """Full-size GPU parity runs in true fp32 (tests.helpers.tf32_off); no other test inherits the setting."""
    with tf32_off():
        yield
