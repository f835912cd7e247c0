"""The lean S3 path (runlog_relay.s3http) against real servers: SSE headers that SeaweedFS
acts on, the server's check of the signed Content-MD5 that stands in for the payload's
SHA-256, and what wrong credentials and a missing bucket turn into."""

from __future__ import annotations

import hashlib
import os

import pytest
from minio import Minio
from minio.error import S3Error
from minio.sse import SseCustomerKey

from runlog_relay.config.credentials import Encryption
from runlog_relay.errors import NotFoundError, PermanentError, RetryableError
from runlog_relay.objectstore import ObjectStore
from tests.support.s3server import S3Endpoint, SeaweedFS

pytestmark = pytest.mark.integration

KEY = hashlib.sha256(b"lean-path customer key").digest()


def store(endpoint: str, bucket: str, **kwargs: object) -> ObjectStore:
    options: dict[str, object] = {"access_key": "minioadmin", "secret_key": "minioadmin"}
    options.update(kwargs)
    return ObjectStore(endpoint=endpoint, bucket=bucket, prefix="run-logs", **options)  # type: ignore[arg-type]


def test_sse_c_on_the_lean_path(seaweedfs: SeaweedFS) -> None:
    client = seaweedfs.client()
    bucket = "lean-ssec"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    encrypted = store(seaweedfs.endpoint, bucket, encryption=Encryption("c", customer_key=KEY))
    body = b'{"run_id": "sse-c", "status": "SUCCESS"}'
    md5 = hashlib.md5(body).hexdigest()
    encrypted.put("sse-c/RunLog", body)
    # HEAD with the key (sent on the lean path too) reads the metadata back.
    assert encrypted.head_md5("sse-c/RunLog") == md5
    (listed,) = list(encrypted.list("sse-c/"))
    assert listed.key == "sse-c/RunLog" and listed.size == len(body)
    # The server encrypted it with that key: without the key it refuses to show it,
    # with it (through the SDK) the bytes come back.
    with pytest.raises(PermanentError):
        store(seaweedfs.endpoint, bucket).head_md5("sse-c/RunLog")
    with pytest.raises(S3Error):
        client.stat_object(bucket, "run-logs/sse-c/RunLog")
    response = client.get_object(bucket, "run-logs/sse-c/RunLog", ssec=SseCustomerKey(KEY))
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()
    assert encrypted.get("sse-c/RunLog") == body  # the SDK's GET with our key


def test_sse_s3_on_the_lean_path(seaweedfs: SeaweedFS) -> None:
    client = seaweedfs.client()
    bucket = "lean-sses3"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    encrypted = store(seaweedfs.endpoint, bucket, encryption=Encryption("s3"))
    encrypted.put("sse-s3/RunLog", b"{}")
    stat = client.stat_object(bucket, "run-logs/sse-s3/RunLog")
    assert stat.metadata.get("x-amz-server-side-encryption") == "AES256"
    assert encrypted.head_md5("sse-s3/RunLog") == hashlib.md5(b"{}").hexdigest()


def test_seaweedfs_refuses_a_body_that_does_not_match_its_content_md5(
    seaweedfs: SeaweedFS,
) -> None:
    client = seaweedfs.client()
    bucket = "lean-md5"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    lean = store(seaweedfs.endpoint, bucket)
    with pytest.raises(RetryableError) as caught:
        lean.put("r/RunLog", b'{"a": 1}', md5=hashlib.md5(b"something else").hexdigest())
    assert caught.value.code == "BadDigest"
    assert not list(lean.list("r/"))  # nothing stored


def test_wrong_credentials_and_a_missing_bucket(any_s3: S3Endpoint, any_bucket: str) -> None:
    missing = store(any_s3.endpoint, "no-such-bucket-here")
    for call, operation in (
        (lambda: missing.put("r/RunLog", b"{}"), "PutObject"),
        (lambda: list(missing.list()), "ListObjectsV2"),
    ):
        with pytest.raises(PermanentError) as caught:
            call()
        assert not isinstance(caught.value, NotFoundError)
        assert caught.value.code == "NoSuchBucket", str(caught.value)
        assert f"({operation})" in str(caught.value)
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        missing.check_bucket()
    present = store(any_s3.endpoint, any_bucket)
    with pytest.raises(NotFoundError):
        present.head_md5("never/written")
    assert present.check_bucket() is False


def test_a_wrong_secret_is_permanent_and_never_shown(seaweedfs: SeaweedFS) -> None:
    secret = "wrong-" + os.urandom(8).hex()
    lean = store(seaweedfs.endpoint, "anything", secret_key=secret, region="us-east-1")
    with pytest.raises(PermanentError) as caught:
        lean.put("r/RunLog", b"{}")
    assert caught.value.code in {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}
    assert secret not in str(caught.value) and "Signature=" not in str(caught.value)


def test_the_lean_path_and_the_sdk_see_the_same_objects(
    any_s3: S3Endpoint, any_s3_client: Minio, any_bucket: str
) -> None:
    lean = store(any_s3.endpoint, any_bucket, storage_class="STANDARD")
    names = ["a/RunLog", "a/BranchLog-map.1", "b c+d/RunLog", "ü/RunLog"]
    for name in names:
        lean.put(name, name.encode())
    listed = {obj.key: obj for obj in lean.list()}
    assert sorted(listed) == sorted(names)
    for name in names:
        assert listed[name].etag == hashlib.md5(name.encode()).hexdigest()
        stat = any_s3_client.stat_object(any_bucket, f"run-logs/{name}")
        assert stat.metadata.get("x-amz-meta-runlog-relay-md5") == listed[name].etag
        assert lean.get(name) == name.encode()
    assert [obj.key for obj in lean.list("a/")] == ["a/BranchLog-map.1", "a/RunLog"]
