from __future__ import annotations

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
