"""Fixtures shared by the CIFAR tests."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models gain nothing from a second thread, and a busy machine makes OpenMP's thread
    hand-offs cost up to 30x; one thread keeps the timing steady."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
