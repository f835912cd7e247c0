"""The documented minimal policy works, against servers that enforce it.

moto with IAM checks on gets the policy JSON copied from docs/security.md (the section "Least
privilege"), byte for byte but for BUCKET/PREFIX; SeaweedFS gets the same permissions as
identities of its ``-s3.config`` (tests/support/s3server.py: WRITER, READER). Neither key
may ask for the bucket's location, so this also proves the GetBucketLocation fallback:
the sidecar runs without ``--region``.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio

from tests.support.mirror import assert_mirror
from tests.support.s3server import (
    LEAST_PRIVILEGE_BUCKET,
    READER,
    WRITER,
    S3Endpoint,
    SeaweedFS,
    start_auth_s3_server,
)
from tests.support.sidecar import start_sidecar
from tests.support.tcpproxy import TcpProxy
from tests.support.toolcli import tool_process

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PREFIX = "run-logs"
LOCATION = f"{LEAST_PRIVILEGE_BUCKET}/{PREFIX}"


def documented_policy(path: Path) -> str:
    """The JSON block that follows "The sidecar's policy" in a document."""
    text = path.read_text(encoding="utf-8")
    found = re.search(r"The sidecar's policy.*?```json\n(.*?)```", text, re.DOTALL)
    assert found, f"no sidecar policy in {path}"
    return found.group(1)


def policy_for(template: str) -> dict[str, object]:
    return json.loads(template.replace("BUCKET", LEAST_PRIVILEGE_BUCKET).replace("PREFIX", PREFIX))


def reader_policy() -> dict[str, object]:
    """The documented readers' policy: the sidecar's listing statement, and GetObject."""
    policy = policy_for(documented_policy(REPO / "docs" / "security.md"))
    statements = policy["Statement"]
    assert isinstance(statements, list)
    listing = next(s for s in statements if s["Action"] == "s3:ListBucket")
    read = {
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{LEAST_PRIVILEGE_BUCKET}/{PREFIX}/*",
    }
    return {"Version": "2012-10-17", "Statement": [listing, read]}


def test_the_docs_give_one_policy() -> None:
    assert documented_policy(REPO / "docs" / "security.md") == documented_policy(
        REPO / "docs" / "aws.md"
    )


@dataclass
class Restricted:
    """A server that enforces permissions, and the two least-privilege key pairs."""

    server: S3Endpoint
    admin: Minio
    writer: tuple[str, str]
    reader: tuple[str, str]


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def restricted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Restricted]:
    if request.param == "seaweedfs":
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        admin = seaweedfs.client()
        if not admin.bucket_exists(LEAST_PRIVILEGE_BUCKET):
            admin.make_bucket(LEAST_PRIVILEGE_BUCKET)
        yield Restricted(
            seaweedfs,
            admin,
            (WRITER.access_key, WRITER.secret_key),
            (READER.access_key, READER.secret_key),
        )
        return

    def create_bucket(endpoint: str) -> None:
        Minio(endpoint.removeprefix("http://"), "setup", "setup", secure=False).make_bucket(
            LEAST_PRIVILEGE_BUCKET
        )

    moto = start_auth_s3_server(
        tmp_path_factory.mktemp("moto-iam") / "moto.log",
        prepare=create_bucket,
        users={
            "relay-writer": policy_for(documented_policy(REPO / "docs" / "security.md")),
            "relay-reader": reader_policy(),
        },
    )
    try:
        yield Restricted(
            moto.server, moto.client(), moto.users["relay-writer"], moto.users["relay-reader"]
        )
    finally:
        moto.stop()


def keys(pair: tuple[str, str]) -> dict[str, str | None]:
    return {"AWS_ACCESS_KEY_ID": pair[0], "AWS_SECRET_ACCESS_KEY": pair[1]}


def write_run(source: Path, run: str) -> None:
    for name in ("RunLog", "BranchLog-map.a", "BranchLog-map.b"):
        path = source / run / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"run_id": run, "name": name, "status": "SUCCESS"}))


def tool(pair: tuple[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return tool_process(*args, env={"AWS_ACCESS_KEY_ID": pair[0], "AWS_SECRET_ACCESS_KEY": pair[1]})


def test_the_sidecar_mirrors_and_restarts_with_list_and_put_only(
    restricted: Restricted, source: Path, tmp_path: Path
) -> None:
    run = f"lp-{restricted.server.kind}"
    write_run(source, run)
    proxy = TcpProxy(restricted.server.port)
    try:
        first = start_sidecar(
            source,
            proxy.endpoint,
            LOCATION,
            tmp_path / "1.log",
            "--once",
            env=keys(restricted.writer),
        )
        assert first.process.wait(60) == 0, first.log
        assert f"GetBucketLocation of bucket '{LEAST_PRIVILEGE_BUCKET}' was refused" in first.log
        assert "set --region to skip the lookup" in first.log
        assert_mirror(restricted.admin, LEAST_PRIVILEGE_BUCKET, PREFIX, source)
        proxy.reset_counts()
        again = start_sidecar(
            source,
            proxy.endpoint,
            LOCATION,
            tmp_path / "2.log",
            "--once",
            env=keys(restricted.writer),
        )
        assert again.process.wait(60) == 0, again.log
        assert proxy.counts["PUT"] == 0 and proxy.counts["HEAD"] == 0, proxy.counts
    finally:
        proxy.close()


def test_the_readers_policy_reads_and_the_writers_does_not(
    restricted: Restricted, source: Path, tmp_path: Path
) -> None:
    run = f"lp-read-{restricted.server.kind}"
    write_run(source, run)
    sidecar = start_sidecar(
        source,
        restricted.server.endpoint,
        LOCATION,
        tmp_path / "s.log",
        "--once",
        env=keys(restricted.writer),
    )
    assert sidecar.process.wait(60) == 0, sidecar.log
    store = ("--endpoint", restricted.server.endpoint, "--bucket", LOCATION)

    listed = tool(restricted.reader, "runs", "--json", *store)
    assert listed.returncode == 0, listed.stderr
    assert run in {r["run_id"] for r in json.loads(listed.stdout)["runs"]}
    verified = tool(restricted.reader, "verify", run, "--source", str(source), *store)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    pulled = tool(restricted.reader, "pull", run, "--dest", str(tmp_path / "p"), *store)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "p" / run / "RunLog.json").read_bytes() == (
        source / run / "RunLog.json"
    ).read_bytes()

    refused = tool(restricted.writer, "pull", run, "--dest", str(tmp_path / "q"), *store)
    assert refused.returncode == 3
    assert "(GetObject): AccessDenied" in refused.stderr, refused.stderr
    assert "the credentials may lack s3:GetObject" in refused.stderr


def test_a_refusal_names_the_operation_and_the_permission(
    restricted: Restricted, source: Path, tmp_path: Path
) -> None:
    """The writer may not list another bucket: the log says which call, which permission."""
    other = f"lp-other-{restricted.server.kind}"
    restricted.admin.make_bucket(other)
    write_run(source, "lp-elsewhere")
    sidecar = start_sidecar(
        source,
        restricted.server.endpoint,
        f"{other}/{PREFIX}",
        tmp_path / "s.log",
        "--once",
        "--region",
        "us-east-1",
        env=keys(restricted.writer),
    )
    assert sidecar.process.wait(60) == 1
    assert f"listing {other}/{PREFIX} (ListObjectsV2): AccessDenied" in sidecar.log, sidecar.log
    assert "the credentials may lack s3:ListBucket" in sidecar.log
    assert "GetBucketLocation" not in sidecar.log  # --region: no lookup at all
