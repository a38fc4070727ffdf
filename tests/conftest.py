from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run tiny models, whose ops gain nothing from intra-op threads; on a shared 2-core box
    OpenMP spinning makes a step up to ten times slower. Tests about threads set their own count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def own_environment():
    """Code run in-process (DeepSpeed's one-rank setup) sets MASTER_PORT and friends in os.environ;
    a later test in the same worker would inherit a port that a live process group still holds."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)
