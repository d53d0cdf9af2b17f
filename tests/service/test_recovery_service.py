"""Recovery through the service: ``data`` and ``eval`` file parts reach the sandboxed conversion, the typed
report carries the accuracy section, and a part that is not a .npz is refused at upload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.core.config import Settings
from service.sdk import InvalidOptions
from tests.service.helpers import KEY_ALICE
from tests.service.test_sdk_integration import FAST, async_sdk


@pytest.mark.asyncio
async def test_data_and_eval_parts_calibrate_and_report_accuracy(make_settings: Callable[..., Settings],
                                                                  model_files: dict[str, Path], tmp_path: Path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", inputs=rng.standard_normal((12, 3, 32, 32)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", inputs=rng.standard_normal((6, 3, 32, 32)).astype(np.float32),
             labels=np.arange(6))
    async with async_sdk(make_settings(api_keys=[KEY_ALICE])) as sdk:
        client = sdk()
        job = await client.convert(model_files["onnx"], data=tmp_path / "data.npz", eval=tmp_path / "eval.npz",
                                   **FAST)
        report = await job.report
        a = report.accuracy
        assert a is not None and a.metric == "top1" and a.samples == 6 and a.calibration_samples == 12
        assert a.held_out.startswith("eval.npz") and a.original is not None and a.calibrated is not None
        assert report.timings.calibrate_s is not None

        (tmp_path / "bad.npz").write_bytes(b"not a zip at all")
        with pytest.raises(InvalidOptions, match=r"data: expected a \.npz"):
            await client.convert(model_files["onnx"], data=tmp_path / "bad.npz", **FAST)


@pytest.mark.asyncio
async def test_max_accuracy_drop_runs_the_search_in_a_job(make_settings: Callable[..., Settings],
                                                          model_files: dict[str, Path], tmp_path: Path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", inputs=np.repeat(np.repeat(base, 4, axis=2), 4, axis=3))
    options = {k: v for k, v in FAST.items() if k != "rank"}
    async with async_sdk(make_settings(api_keys=[KEY_ALICE])) as sdk:
        client = sdk()
        job = await client.convert(model_files["onnx"], data=tmp_path / "data.npz", max_accuracy_drop=0.9,
                                   search_budget_s=60, **options)
        assert job.options["max_accuracy_drop"] == 0.9
        report = await job.report
        s = report.search
        assert s is not None and s.max_drop == 0.9 and not s.default and s.plans
        assert report.policy["kind"] == "max_accuracy_drop" and report.timings.search_s is not None
