"""etag: the ETag S3 gives a body, computed whole or fed in pieces."""

from __future__ import annotations

import hashlib
import random

import pytest

from runlog_relay import etag
from runlog_relay.etag import MULTIPART_THRESHOLD, PART_SIZE, BodyDigest, expected_etag

# --------------------------------------------------------------------------- ETags


def s3_multipart_etag(body: bytes, part_size: int) -> str:
    """S3's ETag of a multipart upload, written out independently of the product code:
    hex(md5(md5(part1) || md5(part2) || ...)) + "-" + number of parts."""
    parts = [body[i : i + part_size] for i in range(0, len(body), part_size)]
    concatenated = b"".join(hashlib.md5(part).digest() for part in parts)
    return hashlib.md5(concatenated).hexdigest() + "-" + str(len(parts))


@pytest.mark.parametrize("body", [b"", b"{}", b'{"run_id": "x"}' * 1000])
def test_small_body_etag_is_its_md5(body: bytes) -> None:
    assert expected_etag(body) == hashlib.md5(body).hexdigest()


def test_body_at_the_threshold_is_one_put() -> None:
    body = b"a" * MULTIPART_THRESHOLD
    assert expected_etag(body) == hashlib.md5(body).hexdigest()
    assert "-" not in expected_etag(body)


def test_body_just_over_the_threshold_is_s3s_composite_of_two_parts() -> None:
    # Different bytes per part so a wrong part boundary changes the result.
    body = bytes(range(256)) * (MULTIPART_THRESHOLD // 256) + b"x"
    etag = expected_etag(body)
    assert etag == s3_multipart_etag(body, PART_SIZE)
    assert etag.endswith("-2")


@pytest.mark.parametrize(("size", "parts"), [(2049, 3), (3072, 3), (3073, 4), (4096, 4)])
def test_multipart_etag_counts_parts_of_part_size(
    monkeypatch: pytest.MonkeyPatch, size: int, parts: int
) -> None:
    # The same rule at a small scale, so the part arithmetic is checked cheaply.
    monkeypatch.setattr(etag, "MULTIPART_THRESHOLD", 2048)
    monkeypatch.setattr(etag, "PART_SIZE", 1024)
    body = bytes(range(256)) * (size // 256) + b"y" * (size % 256)
    got = expected_etag(body)
    assert got == s3_multipart_etag(body, 1024)
    assert got.endswith(f"-{parts}")
    assert got != s3_multipart_etag(body, 512)  # the part size matters


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 2048, 2049, 5000])
def test_pieces_of_any_size_give_the_same_digest(
    monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    monkeypatch.setattr(etag, "MULTIPART_THRESHOLD", 2048)
    monkeypatch.setattr(etag, "PART_SIZE", 1024)
    rng = random.Random(size)
    body = bytes(rng.randrange(256) for _ in range(size))
    digest = BodyDigest()
    index = 0
    while index < size:
        step = rng.choice([1, 7, 1000, 1024, 3000])
        digest.update(body[index : index + step])
        index += step
    assert digest.size == size
    assert digest.md5 == hashlib.md5(body).hexdigest()
    assert digest.etag == expected_etag(body)
    parts = [body[i : i + 1024] for i in range(0, size, 1024)] or [b""]
    assert digest.part_digests() == tuple(hashlib.md5(p).digest() for p in parts)


# ------------------------------------------------------------------- reading a listed ETag


def test_etag_verdict_knows_every_writers_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ours (composite of PART_SIZE parts), one PUT of any size (the MD5: runnable's own
    store, boto3, mc), another tool's part size (cannot tell), and other content."""
    monkeypatch.setattr(etag, "MULTIPART_THRESHOLD", 2048)
    monkeypatch.setattr(etag, "PART_SIZE", 1024)
    body = bytes(range(256)) * 12  # 3 parts of ours
    md5, ours = hashlib.md5(body).hexdigest(), expected_etag(body)
    assert ours.endswith("-3")
    verdict = etag.etag_verdict
    assert verdict(ours, expected=ours, md5=md5) is True
    assert verdict(md5, expected=ours, md5=md5) is True  # one PUT of a big body
    assert verdict(f'"{md5.upper()}"', expected=ours, md5=md5) is True  # as listed, quoted
    assert verdict(s3_multipart_etag(body, 512), expected=ours, md5=md5) is None  # "-6"
    assert verdict(s3_multipart_etag(b"z" * 3072, 1024), expected=ours, md5=md5) is False
    assert verdict(hashlib.md5(b"other").hexdigest(), expected=ours, md5=md5) is False
    # A small body another tool still sent in one part has the "-1" composite.
    small = b'{"run_id": "r"}'
    small_md5 = hashlib.md5(small).hexdigest()
    one_part = s3_multipart_etag(small, 1024)
    assert verdict(one_part, expected=small_md5, md5=small_md5) is True
    assert verdict(s3_multipart_etag(b"{}", 1024), expected=small_md5, md5=small_md5) is False
