"""The training lane: every test trains on one torch thread."""

from __future__ import annotations

from typing import Iterator

import pytest

from training_support import one_thread


@pytest.fixture(autouse=True)
def single_threaded_torch() -> Iterator[None]:
    """In-process training runs on one thread, like the subprocesses (OMP_NUM_THREADS=1):
    comparable bit for bit, and immune to the slowdown of OpenMP threads on a shared,
    oversubscribed CPU."""
    with one_thread():
        yield
