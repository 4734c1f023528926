"""Shared test configuration: ``--device`` and ``--dtype`` set torch defaults for the whole run.

Run the suite on a GPU with ``pytest --device cuda``; in float64 with ``--dtype float64``.
"""

import os

# Notebook kernels (nbmake) and Dask workers are child processes: they inherit this, so they too
# run one OpenMP thread instead of oversubscribing a small machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyro
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda)")
    parser.addoption("--dtype", default="float32", help="default float dtype (float32, float64)")


def pytest_configure(config):
    # One intra-op thread: the tests' tensors are small, and on a shared 2-core machine two
    # threads per process oversubscribe the cores (measured 5-10x slower under load).
    torch.set_num_threads(int(os.environ.get("BED_TEST_THREADS", "1")))
    device = config.getoption("--device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda given but CUDA is not available")
    if device != "cpu":  # a default-device mode slows every op: set it only when needed
        torch.set_default_device(device)
    torch.set_default_dtype(getattr(torch, config.getoption("--dtype")))
    pyro.enable_validation(True)


@pytest.fixture
def device() -> torch.device:
    return torch.get_default_device()


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from a fixed seed and leaves the global RNG state as it found it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pyro.set_rng_seed(0)
        yield
