"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from tests.support import sidecar as sidecar_support
from tests.support.s3server import (
    AuthS3,
    S3Endpoint,
    S3Server,
    SeaweedFS,
    start_auth_s3_server,
    start_s3_server,
    start_seaweedfs,
)

_bucket_numbers = itertools.count()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server in its own process on 127.0.0.1 (one per test session)."""
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """SeaweedFS (master, volume, filer, S3 gateway) on 127.0.0.1, one per test session;
    its log is ``weed.log`` in the session's tmp dir."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


#: The S3 servers every S3 integration test runs against (see tests/support/s3server.py).
S3_KINDS = ("moto", "seaweedfs")


@pytest.fixture(scope="module", params=S3_KINDS)
def any_s3(request: pytest.FixtureRequest) -> S3Endpoint:
    """Each S3 server in turn (module scope, so module-wide set-up such as uploaded runs
    is made once per server). A test using it runs once against moto and once against
    SeaweedFS; ``-k seaweedfs`` or ``-k moto`` picks one."""
    fixture = {"moto": "s3_server", "seaweedfs": "seaweedfs"}[request.param]
    server: S3Endpoint = request.getfixturevalue(fixture)
    return server


@pytest.fixture
def any_s3_client(any_s3: S3Endpoint) -> Minio:
    """The real minio SDK with a key ``any_s3`` accepts for everything."""
    return any_s3.client()


@pytest.fixture
def any_bucket(any_s3_client: Minio) -> str:
    """A fresh, existing bucket on ``any_s3``."""
    return _fresh_bucket(any_s3_client)


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
    return _fresh_bucket(s3_client)


def _fresh_bucket(client: Minio) -> str:
    name = f"test-{next(_bucket_numbers)}-{id(client) % 100000}"
    client.make_bucket(name)
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
