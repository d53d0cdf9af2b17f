"""Shared fixtures. Model factories live in tests/utils/."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    # Two cores here and on CI: keep the test processes from oversubscribing them.
    torch.set_num_threads(1)
