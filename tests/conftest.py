import os

import pytest

from training_support import one_thread

# Keep tests independent of whatever third-party plugins the developer has installed.
os.environ.setdefault("INSTSEG_DISABLE_PLUGINS", "1")


@pytest.fixture(autouse=True)
def _fresh_registry_after_env_change():
    """Tests that touch plugin discovery reset the registry; make sure the next test rediscovers."""
    from instseg.models.registry import reset_registry

    yield
    reset_registry()


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread_per_worker():
    """The suite runs as two xdist workers on two cores: one torch thread each, as the CLI
    subprocesses run (OMP_NUM_THREADS=1), so no OpenMP threads spin against each other, and
    runs compared bit for bit use the same reductions."""
    with one_thread():
        yield


@pytest.fixture(autouse=True)
def single_threaded_torch():
    """A test that changes the thread count (torch.set_num_threads) does not pass it on."""
    with one_thread():
        yield
