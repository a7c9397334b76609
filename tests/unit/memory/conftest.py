"""Memory-core tests run their small tensor ops single-threaded.

Their matrices are tiny (d <= 128): threads cannot help, and on a shared CI machine idle-spinning
OpenMP workers slowed these tests several-fold. The previous setting is restored after each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
