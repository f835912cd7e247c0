"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from tests.support import sidecar as sidecar_support
from tests.support.s3server import AuthS3, S3Server, start_auth_s3_server, start_s3_server

_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in its own process on 127.0.0.1 (one per test session)."""
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthS3]:
    """moto with signature checks and one IAM key allowed everything on S3 (a server per
    test module: moto's auth switch is process-wide)."""
    server = start_auth_s3_server(tmp_path_factory.mktemp("moto-auth") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_client(s3_server: S3Server) -> Minio:
    """The real minio SDK pointed at the test server (for assertions and set-up)."""
    return Minio(f"127.0.0.1:{s3_server.port}", "minioadmin", "minioadmin", secure=False)


@pytest.fixture
def bucket(s3_client: Minio) -> str:
    """A fresh, existing bucket per test so tests never see each other's objects."""
    name = f"test-{next(_bucket_numbers)}-{id(s3_client) % 100000}"
    s3_client.make_bucket(name)
    return name


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """The watched folder (runnable's log_folder)."""
    path = tmp_path / "run_logs"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def _no_stray_sidecars() -> Iterator[None]:
    """A test that fails half-way must not leave its sidecar process running."""
    yield
    sidecar_support.reap()
