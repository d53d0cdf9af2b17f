"""The CLI and the library convert TorchScript/.pt2 models in the service's confined child by default
(service/jobs/local.py): real models still convert (static and dynamic shapes, progress reported, the report and
output where asked), errors keep their type, and ``--trust-model`` converts in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import converter
from service.cli import cli
from service.jobs.confine import landlock_abi
from tests.utils import hostile_files as hf

pytestmark = [pytest.mark.confined,
              pytest.mark.skipif(landlock_abi() == 0, reason="this kernel offers no Landlock")]


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_cli_converts_a_real_model_confined(model_files, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out" / f"m{model_files[fmt].suffix}"
    res = CliRunner().invoke(cli, ["convert", str(model_files[fmt]), "-o", str(out), "--rank", "2",
                                   "--latency-runs", "1", "--input-shape", "x=1x3x32x32",
                                   "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert out.is_file() and (tmp_path / "r.json").is_file()
    assert converter.Report.model_validate_json((tmp_path / "r.json").read_text()).format == fmt


def test_library_confines_by_default_and_reports_progress(tmp_path: Path) -> None:
    model = hf.save_pt2(tmp_path / "dyn.pt2", dynamic=True)  # dims that share a Dim: real guards_code
    stages: list[str] = []
    result = converter.convert(model.read_bytes(), rank=2, latency_runs=1, input_shape={"x": (1, 3, 8, 8)},
                               progress=lambda stage, fraction: stages.append(stage))
    assert result.data and result.report.format == "pt2"
    assert "load" in stages and "verify" in stages


def test_errors_keep_their_type(tmp_path: Path) -> None:
    model = hf.save_torchscript(tmp_path / "m.pt")
    with pytest.raises(converter.InvalidOptionsError, match="input"):
        converter.convert(model, tmp_path / "o.pt", rank=2, latency_runs=1, input_shape={"nope": (1, 3, 8, 8)})


def test_trust_model_converts_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.jobs import local

    monkeypatch.setattr(local, "convert_confined", lambda *a, **k: pytest.fail("not in-process"))
    model = hf.save_torchscript(tmp_path / "m.pt")
    result = converter.convert(model, tmp_path / "o.pt", rank=2, latency_runs=1, input_shape={"x": (1, 3, 8, 8)},
                               trust_model=True)
    assert result.output_path.is_file()


def test_the_confined_run_gets_the_users_files_and_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Landlock the sandbox refuses code formats unless allowed (tests/service/test_confinement.py covers
    that decision); here: the confined run hands it the operator's choice and the user's files, read-only."""
    import service.jobs.local as local

    monkeypatch.setattr(local, "_limits", lambda: (8192, 600.0, False))
    model = hf.save_torchscript(tmp_path / "m.pt")
    spec_seen = {}
    real_run = local._run

    def spy(spec, *a, **k):
        spec_seen.update(spec)
        return real_run(spec, *a, **k)

    monkeypatch.setattr(local, "_run", spy)
    converter.convert(model, tmp_path / "o.pt", rank=2, latency_runs=1, input_shape={"x": (1, 3, 8, 8)})
    assert spec_seen["allow_unconfined"] is False and str(model.resolve()) in spec_seen["read_only"]
