"""Settings: defaults derived from DATA_DIR, SEPCONV_* variables, and refusal of unsafe combinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.config import Settings, SettingsError, load_settings
from tests.service.helpers import head_revision

KEY = "k" * 20


def test_defaults_derive_from_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.data_dir == tmp_path / ".sepconv"
    assert s.database_url == f"sqlite:///{tmp_path / '.sepconv' / 'sepconv.sqlite3'}"
    assert s.storage_url == f"file://{tmp_path / '.sepconv' / 'files'}"
    assert s.executor == "embedded" and s.host == "127.0.0.1" and s.port == 8000
    assert s.max_upload_bytes == 2 * 1024**3 and s.max_queued == 100 and s.job_timeout_s == 1800
    assert s.job_memory_mb == 8192 and s.job_max_attempts == 2 and s.workers == 1
    assert s.celery_queue == "sepconv" and s.celery_gpu_queue == "sepconv-gpu"
    assert s.warnings == [] and not s.load_api_keys()
    assert not (tmp_path / ".sepconv").exists()  # validation creates nothing


def test_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEPCONV_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SEPCONV_API_KEYS", f"{KEY}, {'m' * 16} ,")
    monkeypatch.setenv("SEPCONV_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("SEPCONV_DATABASE_URL", "postgresql://u@db/sepconv")
    monkeypatch.setenv("SEPCONV_STORAGE_URL", "s3://bucket/some/prefix")
    monkeypatch.setenv("SEPCONV_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("SEPCONV_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SEPCONV_HOST", "0.0.0.0")
    s = load_settings()
    assert s.load_api_keys() == [KEY, "m" * 16]
    assert s.executor == "celery"  # derived from the broker
    assert s.database_url == "postgresql+psycopg://u@db/sepconv"
    assert s.max_upload_bytes == 1000 and s.log_level == "debug" and s.host == "0.0.0.0"
    assert s.visibility_timeout_s > s.job_timeout_s
    env = s.worker_env()
    assert env["SEPCONV_BROKER_URL"] == "redis://127.0.0.1:6379/3"
    assert "SEPCONV_API_KEYS" not in env and KEY not in str(env)
    assert Settings(**{k.removeprefix("SEPCONV_").lower(): v for k, v in env.items()}).database_url == s.database_url


def test_no_keys_and_a_public_host_binds_to_loopback_loudly(tmp_path: Path):
    s = load_settings(data_dir=tmp_path, host="0.0.0.0")
    assert s.host == "127.0.0.1"
    assert any("NO API KEYS" in w and "127.0.0.1" in w for w in s.warnings)
    assert load_settings(data_dir=tmp_path, host="0.0.0.0", api_keys=[KEY]).host == "0.0.0.0"
    for loopback in ("localhost", "::1", "127.0.0.2"):
        assert load_settings(data_dir=tmp_path, host=loopback).host == loopback


@pytest.mark.parametrize(("overrides", "message"), [
    ({"executor": "celery"}, "SEPCONV_BROKER_URL"),
    ({"broker_url": "amqp://x"}, "redis"),
    ({"api_keys": ["short"]}, "shorter than 16"),
    ({"api_keys_file": "/nonexistent/keys"}, "SEPCONV_API_KEYS_FILE"),
    ({"database_url": "mysql://x/y"}, "unsupported database"),
    ({"storage_url": "ftp://x/y"}, "SEPCONV_STORAGE_URL"),
    ({"storage_url": "file://relative/path"}, "absolute"),
    ({"storage_url": "s3:///prefix"}, "bucket"),
    ({"job_memory_mb": 10}, "SEPCONV_JOB_MEMORY_MB"),
    ({"workers": -1}, "SEPCONV_WORKERS"),
    ({"executor": "threads"}, "SEPCONV_EXECUTOR"),
])
def test_invalid_or_unsafe_settings_are_refused(tmp_path: Path, overrides: dict, message: str):
    with pytest.raises(SettingsError, match="invalid settings") as e:
        load_settings(data_dir=tmp_path, **overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_risky_combinations_warn(tmp_path: Path):
    s = load_settings(data_dir=tmp_path, broker_url="redis://h/0")
    assert any("SQLite" in w for w in s.warnings) and any("file storage" in w for w in s.warnings)
    s = load_settings(data_dir=tmp_path, broker_url="redis://h/0", executor="embedded")
    assert any("unused" in w for w in s.warnings)
    assert any("tests only" in w for w in load_settings(data_dir=tmp_path, test_hook="sleep").warnings)


def test_cli_reports_invalid_settings_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from click.testing import CliRunner

    from service.cli import cli

    monkeypatch.setenv("SEPCONV_EXECUTOR", "celery")
    res = CliRunner().invoke(cli, ["migrate"])
    assert res.exit_code == 2
    assert res.output.strip().startswith("sepconv: error: invalid settings") and "Traceback" not in res.output
    monkeypatch.delenv("SEPCONV_EXECUTOR")
    monkeypatch.setenv("SEPCONV_DATA_DIR", str(tmp_path))
    res = CliRunner().invoke(cli, ["migrate"])
    assert res.exit_code == 0 and f"revision {head_revision()}" in res.output
    assert (tmp_path / "sepconv.sqlite3").exists()
