"""Storage: the local folder and S3 (moto's server on loopback) behave the same — streamed writes that leave
nothing when aborted, streamed reads, deletes, existence, readiness, and keys that cannot escape."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pytest

from service.core.storage import (
    S3_PART,
    LocalStorage,
    ObjectNotFoundError,
    S3Storage,
    Storage,
    StorageError,
    open_storage,
)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "files")
    request.getfixturevalue("aws_env")
    endpoint = request.getfixturevalue("moto_endpoint")
    s = open_storage(f"s3://bucket-{uuid.uuid4().hex[:8]}/some/prefix", s3_endpoint_url=endpoint)
    assert isinstance(s, S3Storage)
    return s


def test_roundtrip_streamed_in_parts(storage: Storage, tmp_path: Path):
    storage.ensure()
    assert storage.check()
    data = os.urandom(S3_PART * 2 + 12345)  # three S3 multipart parts
    with storage.writer("jobs/a/input") as w:
        for i in range(0, len(data), 1_000_000):
            w.write(data[i:i + 1_000_000])
    assert w.bytes_written == len(data)
    assert storage.exists("jobs/a/input")
    assert b"".join(storage.get("jobs/a/input")) == data
    assert storage.download("jobs/a/input", tmp_path / "copy") == len(data)
    assert (tmp_path / "copy").read_bytes() == data
    assert storage.put("jobs/a/small.json", io.BytesIO(b"{}")) == 2
    assert storage.put("jobs/a/chunks", iter([b"ab", b"cd"])) == 4
    assert b"".join(storage.get("jobs/a/chunks")) == b"abcd"
    storage.delete("jobs/a/input")
    storage.delete("jobs/a/input")  # missing is fine
    assert not storage.exists("jobs/a/input")
    with pytest.raises(ObjectNotFoundError):
        storage.get("jobs/a/input")


def test_an_aborted_or_failed_write_leaves_nothing(storage: Storage):
    storage.ensure()
    w = storage.writer("jobs/b/input")
    w.write(os.urandom(S3_PART + 10))
    w.abort()
    assert not storage.exists("jobs/b/input")
    with pytest.raises(RuntimeError), storage.writer("jobs/b/input") as w2:
        w2.write(b"partial")
        raise RuntimeError("client went away")
    assert not storage.exists("jobs/b/input")
    if isinstance(storage, LocalStorage):
        assert [p for p in storage.root.rglob("*") if p.is_file()] == []
    else:
        uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
        assert uploads == []


@pytest.mark.parametrize("key", ["../etc/passwd", "jobs/../../x", "/abs", "jobs//x", "jobs/x/", "", "a b",
                                 ".hidden", "jobs/.."])
def test_keys_cannot_escape(storage: Storage, key: str):
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.writer(key)
    with pytest.raises(ValueError):
        storage.exists(key)


def test_local_layout_and_cleanup(tmp_path: Path):
    s = LocalStorage(tmp_path / "files")
    s.put("jobs/j1/input", iter([b"x"]))
    s.put("jobs/j1/report.json", iter([b"{}"]))
    assert (tmp_path / "files/jobs/j1/input").read_bytes() == b"x"
    s.delete("jobs/j1/input")
    s.delete("jobs/j1/report.json")
    assert not (tmp_path / "files/jobs/j1").exists() and (tmp_path / "files").exists()


def test_unreachable_storage_is_not_ready(tmp_path: Path, aws_env):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert not LocalStorage(blocked / "files").check()
    assert not S3Storage("bucket", endpoint_url="http://127.0.0.1:9").check()


@pytest.mark.parametrize("code", ["BucketAlreadyOwnedByYou", "BucketAlreadyExists"])
def test_s3_ensure_tolerates_a_bucket_created_at_the_same_moment(request: pytest.FixtureRequest, code: str):
    """Two processes start together: both see no bucket, one creates it first. MinIO (and AWS outside us-east-1)
    then answer the other's CreateBucket with an error, which ensure() must take as success."""
    from botocore.exceptions import ClientError

    request.getfixturevalue("aws_env")
    endpoint = request.getfixturevalue("moto_endpoint")
    url = f"s3://race-{uuid.uuid4().hex[:8]}/p"
    first, second = open_storage(url, s3_endpoint_url=endpoint), open_storage(url, s3_endpoint_url=endpoint)
    real_head = second.client.head_bucket

    def head_before_the_other_creates(**kwargs):
        error = None
        try:
            real_head(**kwargs)
        except ClientError as e:
            error = e
        first.ensure()  # the other process wins the race right after our look
        if error is None:
            raise AssertionError("the bucket should not exist yet")
        raise error

    def create_as_minio_answers(**kwargs):
        raise ClientError({"Error": {"Code": code, "Message": "taken"}}, "CreateBucket")

    second.client.head_bucket = head_before_the_other_creates
    second.client.create_bucket = create_as_minio_answers
    second.ensure()
    second.put("k", [b"v"])
    assert b"".join(second.get("k")) == b"v"
    second.client.create_bucket = lambda **kw: (_ for _ in ()).throw(
        ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "CreateBucket"))
    second.client.head_bucket = lambda **kw: (_ for _ in ()).throw(
        ClientError({"Error": {"Code": "404", "Message": "missing"}}, "HeadBucket"))
    with pytest.raises(StorageError, match="could not be created"):
        second.ensure()
