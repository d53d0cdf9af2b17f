"""``sepconv convert --recover finetune``: the fine-tune flags (generated from ConversionConfig) reach the library,
and the summary names the fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from service.cli import cli
from tests.utils.finetune_models import tiny_files


def test_cli_convert_with_finetune(tmp_path: Path) -> None:
    files = tiny_files(tmp_path)
    out = tmp_path / "slim.onnx"
    result = CliRunner().invoke(cli, ["convert", str(files["onnx"]), "-o", str(out), "--rank", "1", "--recover",
                                      "finetune", "--data", str(files["data"]), "--epochs", "1",
                                      "--finetune-minutes", "1", "--device", "cpu", "--no-verify",
                                      "--checkpoint-dir", str(tmp_path / "ck"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["finetune"]["epochs"] == 1 and report["finetune"]["device"] == "cpu"
    assert out.is_file() and (tmp_path / "ck" / "finetune.ckpt").is_file()


def test_cli_finetune_without_data_is_one_line(tmp_path: Path) -> None:
    files = tiny_files(tmp_path)
    result = CliRunner().invoke(cli, ["convert", str(files["onnx"]), "-o", str(tmp_path / "o.onnx"), "--rank", "1",
                                      "--recover", "finetune", "--no-verify"])
    assert result.exit_code != 0 and "needs samples" in result.output and "Traceback" not in result.output
