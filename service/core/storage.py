"""Where uploads, converted models and reports live: a small ``Storage`` protocol with a local-folder and an S3
implementation, chosen by ``SEPCONV_STORAGE_URL`` (``file:///folder`` or ``s3://bucket/prefix``).

Everything streams: an object is written through an ``ObjectWriter`` chunk by chunk (S3: a multipart upload in
8 MiB parts) and read back as an iterator of chunks, so neither the API nor a worker ever holds a whole model in
memory. A writer that is aborted, or never committed, leaves nothing behind: local files are written under a
temporary name and renamed on commit; S3 multipart uploads are aborted.

Keys are chosen by the service (``jobs/<id>/input``…), never derived from a user's file name, and are checked
against a strict pattern so that no key can escape the folder or bucket prefix. This module knows nothing about
jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

__all__ = [
    "CHUNK",
    "LocalStorage",
    "ObjectNotFoundError",
    "ObjectWriter",
    "S3Storage",
    "Storage",
    "StorageError",
    "open_storage",
]

log = logging.getLogger("sepconv.storage")

#: Chunk size for reads and local writes.
CHUNK = 1024 * 1024
#: S3 multipart part size (the minimum S3 accepts is 5 MiB).
S3_PART = 8 * 1024 * 1024

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class StorageError(Exception):
    """The storage backend failed (I/O error, S3 error)."""


class ObjectNotFoundError(StorageError, KeyError):
    """No object under that key."""


def _check_key(key: str) -> str:
    if not _KEY_RE.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


@runtime_checkable
class ObjectWriter(Protocol):
    """Writes one object in chunks. Use as a context manager: it commits on a clean exit and aborts (leaving
    nothing) on an exception."""

    key: str
    bytes_written: int

    def write(self, chunk: bytes) -> None:
        """Append bytes to the object."""
        ...

    def commit(self) -> None:
        """Make the object visible under its key."""
        ...

    def abort(self) -> None:
        """Discard everything written; idempotent."""
        ...

    def __enter__(self) -> ObjectWriter: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@runtime_checkable
class Storage(Protocol):
    """An object store: write by streaming, read by streaming, delete, check."""

    def writer(self, key: str) -> ObjectWriter:
        """A writer for a new object under ``key`` (replacing any object there on commit)."""
        ...

    def put(self, key: str, source: IO[bytes] | Iterable[bytes]) -> int:
        """Stream a file object or an iterable of chunks into ``key``; returns the bytes written."""
        ...

    def get(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks.

        Raises:
            ObjectNotFoundError: no such key (raised at once, before the first chunk).
        """
        ...

    def download(self, key: str, dest: Path) -> int:
        """Write the object to the local file ``dest``; returns its size."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def check(self) -> bool:
        """Readiness: the store answers and can be written to (never raises)."""
        ...

    def ensure(self) -> None:
        """Create what the store needs (folder, bucket) if it is missing."""
        ...

    def list_keys(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every committed object whose key starts with ``prefix``, as ``(key, last modified, Unix time)``."""
        ...

    def sweep_partial(self, older_than: float) -> int:
        """Discard writes begun before ``older_than`` (Unix time) and never committed nor aborted — what a killed
        process leaves (a local ``.part-*`` file, an S3 multipart upload); returns how many."""
        ...


class _WriterBase:
    key: str
    bytes_written: int = 0
    _done = False

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def _chunks_of(source: IO[bytes] | Iterable[bytes]) -> Iterator[bytes]:
    if hasattr(source, "read"):
        while True:
            chunk = source.read(CHUNK)
            if not chunk:
                return
            yield chunk
    else:
        yield from source


class _StorageBase:
    def writer(self, key: str) -> ObjectWriter:  # pragma: no cover - overridden
        raise NotImplementedError

    def get(self, key: str) -> Iterator[bytes]:  # pragma: no cover - overridden
        raise NotImplementedError

    def put(self, key: str, source: IO[bytes] | Iterable[bytes]) -> int:
        with self.writer(key) as w:
            for chunk in _chunks_of(source):
                w.write(chunk)
        return w.bytes_written

    def download(self, key: str, dest: Path) -> int:
        size = 0
        with open(dest, "wb") as f:
            for chunk in self.get(key):
                f.write(chunk)
                size += len(chunk)
        return size


class _LocalWriter(_WriterBase):
    def __init__(self, path: Path, key: str) -> None:
        self.key = key
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=path.parent)
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb")
        self.bytes_written = 0

    def write(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self.bytes_written += len(chunk)

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        self._f.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._f.close()
        self._tmp.unlink(missing_ok=True)


class LocalStorage(_StorageBase):
    """Objects as files under a root folder (``file:///srv/sepconv/files``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = (self.root / _check_key(key)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"invalid storage key {key!r}")
        return path

    def writer(self, key: str) -> ObjectWriter:
        return _LocalWriter(self._path(key), key)

    def get(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise ObjectNotFoundError(key) from None
        return _read_file(f)

    def download(self, key: str, dest: Path) -> int:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFoundError(key)
        shutil.copyfile(src, dest)
        return dest.stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._remove_empty_parents(path)  # the job's folder once empty; keys are <prefix>/<id>/<name>

    def check(self) -> bool:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".ready-"):
                pass
            return True
        except OSError as e:
            log.warning("storage check failed: %s", e)
            return False

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def list_keys(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        for folder, dirs, names in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                if name.startswith("."):  # partial writes and readiness probes are not objects
                    continue
                path = Path(folder, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and _KEY_RE.match(key):
                    try:
                        yield key, path.lstat().st_mtime
                    except FileNotFoundError:  # deleted meanwhile
                        continue

    def sweep_partial(self, older_than: float) -> int:
        removed = 0
        for path in list(self.root.rglob(".part-*")):  # listed first: emptied folders go as we remove
            try:
                if path.is_file() and not path.is_symlink() and path.lstat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
                    self._remove_empty_parents(path)
            except FileNotFoundError:
                continue
        return removed

    def _remove_empty_parents(self, path: Path) -> None:
        parent = path.parent
        while parent != self.root and parent.is_dir():
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _read_file(f: IO[bytes]) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


class _S3Writer(_WriterBase):
    def __init__(self, storage: S3Storage, key: str) -> None:
        self.key = key
        self._s3 = storage
        self._object = storage._object_key(key)
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.bytes_written = 0

    def write(self, chunk: bytes) -> None:
        self._buf += chunk
        self.bytes_written += len(chunk)
        while len(self._buf) >= S3_PART:
            self._send(bytes(self._buf[:S3_PART]))
            del self._buf[:S3_PART]

    def _send(self, part: bytes) -> None:
        client = self._s3.client
        with _s3(f"S3 upload of {self.key} failed"):
            if self._upload_id is None:
                self._upload_id = client.create_multipart_upload(Bucket=self._s3.bucket, Key=self._object)["UploadId"]
            n = len(self._parts) + 1
            etag = client.upload_part(Bucket=self._s3.bucket, Key=self._object, UploadId=self._upload_id,
                                      PartNumber=n, Body=part)["ETag"]
        self._parts.append({"PartNumber": n, "ETag": etag})

    def commit(self) -> None:
        if self._done:
            return
        self._done = True
        client = self._s3.client
        try:
            with _s3(f"S3 upload of {self.key} failed"):
                if self._upload_id is None:
                    client.put_object(Bucket=self._s3.bucket, Key=self._object, Body=bytes(self._buf))
                else:
                    if self._buf:
                        self._send(bytes(self._buf))
                    client.complete_multipart_upload(Bucket=self._s3.bucket, Key=self._object,
                                                     UploadId=self._upload_id, MultipartUpload={"Parts": self._parts})
        except StorageError:
            self._abort_upload()
            raise
        finally:
            self._buf = bytearray()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buf = bytearray()
        self._abort_upload()

    def _abort_upload(self) -> None:
        if self._upload_id is not None:
            try:
                self._s3.client.abort_multipart_upload(Bucket=self._s3.bucket, Key=self._object,
                                                       UploadId=self._upload_id)
            except Exception as e:  # best effort: a lifecycle rule cleans up what is left
                log.warning("could not abort S3 multipart upload of %s: %s", self.key, e)
            self._upload_id = None


class S3Storage(_StorageBase):
    """Objects in an S3 bucket under a prefix (``s3://bucket/prefix``); MinIO via ``endpoint_url``. Credentials
    come from boto3's usual chain (``AWS_ACCESS_KEY_ID``…)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        # boto3 clients are thread-safe but not fork-safe: one per process (and thread, to be safe).
        key = os.getpid()
        cached = getattr(self._local, "client", None)
        if cached is None or cached[0] != key:
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                              s3={"addressing_style": "path"} if self.endpoint_url else None))
            self._local.client = (key, client)
            return client
        return cached[1]

    def _object_key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def writer(self, key: str) -> ObjectWriter:
        return _S3Writer(self, key)

    def get(self, key: str) -> Iterator[bytes]:
        obj = self._object_key(key)
        with _s3(f"S3 read of {key} failed", missing=key):
            body = self.client.get_object(Bucket=self.bucket, Key=obj)["Body"]
        return _read_body(body)

    def exists(self, key: str) -> bool:
        obj = self._object_key(key)
        try:
            with _s3(f"S3 head of {key} failed", missing=key):
                self.client.head_object(Bucket=self.bucket, Key=obj)
            return True
        except ObjectNotFoundError:
            return False

    def delete(self, key: str) -> None:
        obj = self._object_key(key)
        with contextlib.suppress(ObjectNotFoundError), _s3(f"S3 delete of {key} failed", missing=key):
            self.client.delete_object(Bucket=self.bucket, Key=obj)

    def check(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except Exception as e:
            log.warning("storage check failed: %s", e)
            return False

    def ensure(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            if not _is_missing(e):
                raise StorageError(f"S3 bucket {self.bucket!r} is not reachable: {e}") from e
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except Exception as e2:
                # Another process (a worker starting at the same moment) created it first: that is fine.
                if _error_code(e2) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StorageError(f"S3 bucket {self.bucket!r} could not be created: {e2}") from e2
            else:
                log.info("created S3 bucket %s", self.bucket)

    def list_keys(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        base = f"{self.prefix}/" if self.prefix else ""
        with _s3(f"S3 listing of {prefix!r} failed"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=base + prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(base):], obj["LastModified"].timestamp()

    def sweep_partial(self, older_than: float) -> int:
        base = f"{self.prefix}/" if self.prefix else ""
        aborted = 0
        with _s3("S3 sweep of multipart uploads failed"):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                     Prefix=base):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() < older_than:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        aborted += 1
        return aborted


def _read_body(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


@contextlib.contextmanager
def _s3(what: str, *, missing: str | None = None) -> Iterator[None]:
    """The S3 boundary: boto3's and botocore's exceptions become a ``StorageError`` saying what failed, and a
    missing object or bucket becomes ``ObjectNotFoundError(missing)`` when the caller names the key."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        if missing is not None and _is_missing(e):
            raise ObjectNotFoundError(missing) from None
        raise StorageError(f"{what}: {e}") from e


def _error_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _is_missing(e: Exception) -> bool:
    return _error_code(e) in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


def open_storage(url: str, *, s3_endpoint_url: str | None = None) -> Storage:
    """The storage named by a ``file://`` or ``s3://`` URL (validated by ``Settings``)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStorage(parts.path)
    if parts.scheme == "s3":
        return S3Storage(parts.netloc, parts.path, endpoint_url=s3_endpoint_url)
    raise ValueError(f"unsupported storage URL {url!r}")
