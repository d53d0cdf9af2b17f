"""The service's one settings object, read from ``SEPCONV_*`` environment variables and validated at start.

Every process of the service (``sepconv serve``, its embedded workers, ``sepconv worker``, ``sepconv migrate``)
builds one ``Settings`` and passes it down; nothing else reads ``os.environ``. Validation refuses unsafe or
contradictory combinations with a one-line message (an executor ``celery`` without a broker, a keys file that
does not exist, an unknown database or storage scheme) and makes the one safe substitution the issue asks for: a
server asked to listen beyond loopback with no API keys binds to 127.0.0.1 instead and says so loudly.

All variables (name, default, meaning) — this table is pasted into the README:

=============================  ===============================  ==================================================
Variable                       Default                          Meaning
=============================  ===============================  ==================================================
``SEPCONV_DATA_DIR``           ``./.sepconv``                   Folder for the default SQLite database and the
                                                                default file storage (made absolute at start).
``SEPCONV_DATABASE_URL``       ``sqlite:///<DATA_DIR>/``        SQLAlchemy URL of the job database: SQLite or
                               ``sepconv.sqlite3``              PostgreSQL (``postgresql://…`` is read as
                                                                ``postgresql+psycopg://…``).
``SEPCONV_STORAGE_URL``        ``file://<DATA_DIR>/files``      Where uploads, converted models and reports go:
                                                                ``file:///abs/folder`` or ``s3://bucket/prefix``.
``SEPCONV_S3_ENDPOINT_URL``    unset (AWS)                      S3 endpoint for MinIO and other S3-compatible
                                                                stores; credentials come from the standard
                                                                ``AWS_*`` variables.
``SEPCONV_BROKER_URL``         unset                            Redis URL of the Celery broker; setting it makes
                                                                ``celery`` the default executor.
``SEPCONV_EXECUTOR``           ``embedded``, or ``celery``      ``embedded``: ``sepconv serve`` runs its own worker
                               when ``BROKER_URL`` is set       processes; ``celery``: jobs go to Celery workers
                                                                (``sepconv worker``).
``SEPCONV_API_KEYS``           unset                            Comma-separated API keys (each ≥ 16 characters).
``SEPCONV_API_KEYS_FILE``      unset                            File with one API key per line (``#`` comments);
                                                                merged with ``API_KEYS``. With no key at all the
                                                                API is open and binds to 127.0.0.1 only.
``SEPCONV_MAX_UPLOAD_BYTES``   ``2147483648`` (2 GiB)           Largest upload (model + inputs files); larger ones
                                                                are refused with 413 as the bytes arrive.
``SEPCONV_MAX_QUEUED``         ``100``                          Queued jobs beyond which ``POST /convert`` answers
                                                                503 with ``Retry-After``.
``SEPCONV_JOB_TIMEOUT_S``      ``1800``                         Wall-clock limit of one conversion; the sandbox's
                                                                process group is killed past it.
``SEPCONV_JOB_MEMORY_MB``      ``8192``                         Address-space limit (``RLIMIT_AS``) of the
                                                                conversion process.
``SEPCONV_JOB_MAX_ATTEMPTS``   ``2``                            Times a job is started before a lost worker or a
                                                                server restart fails it instead of re-queueing.
``SEPCONV_JOB_LEASE_S``        ``60``                           A running job's lease; its worker renews it every
                                                                quarter of this, and a job whose lease expired
                                                                (its worker died) is re-queued or failed.
``SEPCONV_WORKERS``            ``1``                            Worker processes ``sepconv serve`` starts with the
                                                                embedded executor (``0``: API only).
``SEPCONV_POLL_INTERVAL_S``    ``2``                            How often an idle embedded worker looks for
                                                                queued jobs (it is also woken on submit).
``SEPCONV_HOST``               ``127.0.0.1``                    Address ``sepconv serve`` listens on.
``SEPCONV_PORT``               ``8000``                         Port ``sepconv serve`` listens on.
``SEPCONV_LOG_LEVEL``          ``info``                         ``debug``, ``info``, ``warning`` or ``error``.
``SEPCONV_CELERY_QUEUE``       ``sepconv``                      Celery queue conversion jobs are sent to.
``SEPCONV_CELERY_GPU_QUEUE``   ``sepconv-gpu``                  Celery queue of jobs that fine-tune
                                                                (``recover=finetune``), for GPU workers.
``SEPCONV_ALLOW_UNCONFINED_``  ``false``                        Accept TorchScript/``.pt2`` uploads even where the
``CODE``                                                        kernel offers no Landlock confinement (the
                                                                conversion could then read the worker user's
                                                                files); refused otherwise.
``SEPCONV_REQUEUE_AFTER_S``    ``300``                          A job queued this long without being claimed is
                                                                published again (a broker that lost its message);
                                                                claims are idempotent, so a duplicate is harmless.
``SEPCONV_SWEEP_INTERVAL_S``   ``600``                          How often partial uploads and storage objects of
                                                                no job are swept (and once at start).
``SEPCONV_SWEEP_GRACE_S``      ``3600``                         Age an orphaned object or partial upload must
                                                                reach before a sweep deletes it.
``SEPCONV_TEST_HOOK``          unset                            Tests only: ``sleep`` or ``allocate`` makes every
                                                                conversion hang or allocate memory without bound
                                                                so the time and memory limits can be tested;
                                                                ``unchecked`` skips the graph check so that the
                                                                confinement alone is tested.
=============================  ===============================  ==================================================

This module opens no connection and creates no file or folder; the database, storage and broker are opened by
their own modules.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "load_settings"]

log = logging.getLogger("sepconv.config")

MIN_KEY_LENGTH = 16


class SettingsError(ValueError):
    """The settings are invalid or unsafe; the message is one line naming the variable."""


class Settings(BaseSettings):
    """The service's configuration; see the module docstring for every variable."""

    model_config = SettingsConfigDict(env_prefix="SEPCONV_", extra="ignore", frozen=True)

    data_dir: Path = Path(".sepconv")
    database_url: str | None = None
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    broker_url: str | None = None
    executor: Literal["embedded", "celery"] | None = None
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    api_keys_file: Path | None = None
    max_upload_bytes: int = Field(2 * 1024**3, ge=1)
    max_queued: int = Field(100, ge=1)
    job_timeout_s: float = Field(1800.0, gt=0)
    job_memory_mb: int = Field(8192, ge=64)
    job_max_attempts: int = Field(2, ge=1, le=100)
    job_lease_s: float = Field(60.0, ge=1.0)
    workers: int = Field(1, ge=0, le=256)
    poll_interval_s: float = Field(2.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    celery_queue: str = Field("sepconv", min_length=1)
    celery_gpu_queue: str = Field("sepconv-gpu", min_length=1)
    # Hardening: confinement opt-out, re-publishing of stranded jobs, sweeps of leaked files.
    allow_unconfined_code: bool = False
    requeue_after_s: float = Field(300.0, ge=1.0)
    sweep_interval_s: float = Field(600.0, ge=1.0)
    sweep_grace_s: float = Field(3600.0, ge=0.0)
    test_hook: Literal["sleep", "allocate", "unchecked", "escape", "flood"] | None = None

    _warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("database_url", "storage_url", "broker_url", "s3_endpoint_url", "executor", "test_hook",
                     "api_keys_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _derive_and_check(self) -> Settings:
        # The settings are frozen for everyone else; derivation happens once, here.
        set_ = object.__setattr__
        data_dir = self.data_dir.expanduser().resolve()
        set_(self, "data_dir", data_dir)
        if self.database_url is None:
            set_(self, "database_url", f"sqlite:///{data_dir / 'sepconv.sqlite3'}")
        set_(self, "database_url", _normalise_database_url(self.database_url))
        if self.storage_url is None:
            set_(self, "storage_url", f"file://{data_dir / 'files'}")
        _check_storage_url(self.storage_url)
        if self.executor is None:
            set_(self, "executor", "celery" if self.broker_url else "embedded")
        if self.executor == "celery" and not self.broker_url:
            raise ValueError("SEPCONV_EXECUTOR=celery needs SEPCONV_BROKER_URL (a redis:// URL)")
        if self.broker_url and urlsplit(self.broker_url).scheme not in ("redis", "rediss"):
            raise ValueError(f"SEPCONV_BROKER_URL must be a redis:// or rediss:// URL, not {self.broker_url!r}")
        if self.executor == "embedded" and self.broker_url:
            self._warnings.append("SEPCONV_BROKER_URL is set but SEPCONV_EXECUTOR=embedded: the broker is unused")
        if self.executor == "celery" and self.database_url.startswith("sqlite"):
            self._warnings.append("the Celery executor with a SQLite database works only when every worker runs "
                                  "on this machine; use PostgreSQL for workers elsewhere")
        if self.executor == "celery" and self.storage_url.startswith("file://"):
            self._warnings.append("the Celery executor with file storage works only when every worker sees the "
                                  "same folder; use s3:// storage for workers elsewhere")
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"SEPCONV_API_KEYS_FILE {str(self.api_keys_file)!r} is not a readable file")
        short = [k for k in self.load_api_keys() if len(k) < MIN_KEY_LENGTH]
        if short:
            raise ValueError(f"{len(short)} API key(s) shorter than {MIN_KEY_LENGTH} characters; use long random "
                             "keys (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
        if not self.load_api_keys() and not _is_loopback(self.host):
            self._warnings.append(
                f"NO API KEYS ARE CONFIGURED: refusing to listen on {self.host!r} and binding to 127.0.0.1 instead. "
                "Set SEPCONV_API_KEYS or SEPCONV_API_KEYS_FILE to serve other machines.")
            set_(self, "host", "127.0.0.1")
        if self.allow_unconfined_code:
            self._warnings.append("SEPCONV_ALLOW_UNCONFINED_CODE is set: TorchScript/.pt2 models are converted even "
                                  "where the kernel cannot confine the conversion process to its job folder")
        if self.test_hook is not None:
            self._warnings.append(f"SEPCONV_TEST_HOOK={self.test_hook}: every conversion is sabotaged on purpose "
                                  "(tests only)")
        return self

    @property
    def warnings(self) -> list[str]:
        """What validation substituted or found risky; ``log_warnings`` prints it at start."""
        return list(self._warnings)

    def log_warnings(self) -> None:
        """Log every warning of ``warnings`` (loudly)."""
        for w in self._warnings:
            log.warning("%s", w)

    def load_api_keys(self) -> list[str]:
        """The configured keys: ``API_KEYS`` plus the lines of ``API_KEYS_FILE`` (blank lines and ``#`` comments
        skipped)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None and self.api_keys_file.is_file():
            for line in self.api_keys_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return keys

    # Intervals derived from the lease, in one place: a job's lease must be renewed several times before it
    # expires, and an expired lease found within about half a lease.

    @property
    def heartbeat_interval_s(self) -> float:
        """How often a worker renews its job's lease (and writes progress): four times per lease, 0.5–10 s."""
        return max(0.5, min(self.job_lease_s / 4, 10.0))

    @property
    def reap_interval_s(self) -> float:
        """How often workers look for jobs whose lease expired: twice per lease, 1–30 s."""
        return max(1.0, min(self.job_lease_s / 2, 30.0))

    @property
    def upkeep_interval_s(self) -> float:
        """How often the API process reaps expired leases and replaces dead embedded workers: twice per lease,
        0.5–2 s, so that a dead embedded worker's job is re-queued within seconds (``EmbeddedExecutor.maintain``)."""
        return max(0.5, min(self.job_lease_s / 2, 2.0))

    @property
    def visibility_timeout_s(self) -> int:
        """Redis broker visibility timeout: longer than a job can stay reserved (one prefetched message waits
        for the running one, then runs itself), so an unacknowledged message is not redelivered while alive."""
        return int(2 * self.job_timeout_s + 4 * self.job_lease_s + 600)

    def worker_env(self) -> dict[str, str]:
        """These settings as ``SEPCONV_*`` variables for a worker process; API keys are left out (workers need
        none)."""
        out = {}
        for name, value in self.model_dump(exclude={"api_keys", "api_keys_file"}).items():
            if value is None:
                continue
            out[f"SEPCONV_{name.upper()}"] = str(value)
        return out


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment (``overrides`` win) and validate them.

    Raises:
        SettingsError: a variable is invalid or the combination unsafe; the message names it.
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"SEPCONV_{loc.upper()}: {msg}" if loc else msg)
        raise SettingsError("invalid settings: " + "; ".join(parts)) from None


def _normalise_database_url(url: str) -> str:
    scheme = url.split(":", 1)[0]
    if scheme in ("postgres", "postgresql"):
        return "postgresql+psycopg" + url[len(scheme):]
    if scheme in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        return url
    raise ValueError(f"SEPCONV_DATABASE_URL: unsupported database {scheme!r}; use sqlite:///… or postgresql://…")


def _check_storage_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if not parts.path.startswith("/") or parts.netloc not in ("", "localhost"):
            raise ValueError(f"SEPCONV_STORAGE_URL {url!r}: a file URL needs an absolute path (file:///srv/sepconv)")
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"SEPCONV_STORAGE_URL {url!r}: name the bucket (s3://bucket/prefix)")
    else:
        raise ValueError(f"SEPCONV_STORAGE_URL {url!r}: use file:///folder or s3://bucket/prefix")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

