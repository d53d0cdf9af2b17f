"""Shared fixtures. Model factories live in tests/utils/."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    # Two cores here and on CI: keep the test processes from oversubscribing them.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _timing_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Candidate timings are cached per session (shapes repeat across tests), never in the user's cache folder.
    import os

    os.environ.setdefault("SEPCONV_CACHE_DIR", str(tmp_path_factory.mktemp("sepconv-cache")))


@pytest.fixture(autouse=True)
def _in_process_conversions(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    # The library and CLI convert TorchScript/.pt2 models in the service's confined child process by default;
    # the suite runs them in-process (faster, and monkeypatches reach them) except in tests marked ``confined``,
    # which exercise that default (tests/*/test_redteam.py, tests/service/test_cli_confined.py).
    if request.node.get_closest_marker("confined") is None:
        import converter.pipeline._convert

        monkeypatch.setattr(converter.pipeline._convert, "SANDBOX_BY_DEFAULT", False)
