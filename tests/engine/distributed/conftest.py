"""One intra-op thread, as every worker process uses: the in-process references
then compute in the same order as the workers, and the shared cores stay free."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
