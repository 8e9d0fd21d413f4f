import os

import pytest

# Keep tests independent of whatever third-party plugins the developer has installed.
os.environ.setdefault("INSTSEG_DISABLE_PLUGINS", "1")


@pytest.fixture(autouse=True)
def _fresh_registry_after_env_change():
    """Tests that touch plugin discovery reset the registry; make sure the next test rediscovers."""
    from instseg.models.registry import reset_registry

    yield
    reset_registry()
