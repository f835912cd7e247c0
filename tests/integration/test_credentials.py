"""Credential sources end to end: the real sidecar and tools against servers that check.

moto runs S3 with signature checks and its STS on a port of its own, in one process
(tests/support/motosts.py): S3 accepts only keys its IAM knows, and temporary
credentials only with their session token. The container-credentials endpoint (EKS Pod
Identity) and IMDSv2 are local HTTP servers (tests/support/credserver.py) that hand out
real temporary credentials minted by that STS. No part of the code under test is
patched: the sidecar runs as a subprocess with the environment EKS would give a pod.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from tests.support.credserver import (
    CREDENTIALS_PATH,
    IMDS_ROLE,
    IMDS_ROLES_PATH,
    IMDS_TOKEN_PATH,
    CredentialsEndpoint,
)
from tests.support.mirror import assert_mirror
from tests.support.motosts import ROLE_ARN, StsS3, start_sts_s3_server
from tests.support.sidecar import start_sidecar
from tests.support.tcpproxy import TcpProxy
from tests.support.toolcli import tool_process
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

BUCKET = "credentials"
#: A web identity token as the kubelet projects it (moto's STS does not verify JWTs).
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6cmVsYXkifQ.c2lnbmF0dXJl"
#: Removes the static minioadmin keys the sidecar helper sets by default.
NO_STATIC_KEYS: dict[str, str | None] = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}


@pytest.fixture(scope="module")
def sts_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StsS3]:
    server = start_sts_s3_server(
        tmp_path_factory.mktemp("moto-sts") / "moto.log", buckets=(BUCKET,)
    )
    yield server
    server.stop()


@pytest.fixture
def admin(sts_s3: StsS3) -> Minio:
    """A client with the IAM user's key, for assertions."""
    return Minio(
        sts_s3.endpoint.removeprefix("http://"),
        sts_s3.user_key,
        sts_s3.user_secret,
        secure=False,
        region="us-east-1",
    )


def write_runs(source: Path, run: str, count: int = 3) -> None:
    for index in range(count):
        path = source / run / f"BranchLog-b{index}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"run": run, "branch": index}))


def secrets_absent(text: str, *values: str) -> None:
    for value in values:
        assert value not in text, "a secret value reached the log"


def test_irsa_web_identity_against_moto_sts(
    sts_s3: StsS3, admin: Minio, source: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(JWT)
    write_runs(source, "irsa-run")
    env = {
        **NO_STATIC_KEYS,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_ARN": ROLE_ARN,
        "AWS_ROLE_SESSION_NAME": "relay-test",
    }
    sts_proxy = TcpProxy(sts_s3.sts_port)  # counts what reaches STS
    try:
        sidecar = start_sidecar(
            source,
            sts_s3.endpoint,
            f"{BUCKET}/irsa",
            tmp_path / "s.log",
            "--once",
            "--sts-endpoint",
            sts_proxy.endpoint,
            env=env,
        )
        assert sidecar.process.wait(60) == 0, sidecar.log
        assert sts_proxy.counts["POST"] == 1  # one AssumeRoleWithWebIdentity for the run
    finally:
        sts_proxy.close()
    assert_mirror(admin, BUCKET, "irsa", source)
    assert f"web identity for {ROLE_ARN}" in sidecar.log  # the source is named …
    secrets_absent(sidecar.log, JWT, JWT[-20:])  # … its token is not

    # The tools take the same identity.
    listing = tool_process(
        *("runs", "--json", "--endpoint", sts_s3.endpoint, "--bucket", f"{BUCKET}/irsa"),
        *("--sts-endpoint", sts_s3.sts_endpoint),
        env={k: v for k, v in env.items() if v is not None},
    )
    assert listing.returncode == 0, listing.stderr
    assert [r["run_id"] for r in json.loads(listing.stdout)["runs"]] == ["irsa-run"]

    # The server really checks: runnable's default keys are refused.
    refused = start_sidecar(
        source, sts_s3.endpoint, f"{BUCKET}/irsa", tmp_path / "static.log", "--once"
    )
    assert refused.process.wait(60) == 1
    assert "InvalidAccessKeyId" in refused.log


def test_web_identity_without_its_token_is_a_clear_error(source: Path, tmp_path: Path) -> None:
    sidecar = start_sidecar(
        source,
        "http://127.0.0.1:9",
        BUCKET,
        tmp_path / "s.log",
        "--once",
        "--credentials",
        "web-identity",
        env={**NO_STATIC_KEYS, "AWS_ROLE_ARN": ROLE_ARN},
        metrics=False,
    )
    assert sidecar.process.wait(30) == 2
    assert "needs AWS_WEB_IDENTITY_TOKEN_FILE" in sidecar.log


@pytest.fixture
def pod_identity(sts_s3: StsS3, tmp_path: Path) -> Iterator[tuple[CredentialsEndpoint, Path]]:
    """The EKS Pod Identity agent's endpoint and the token file the pod gets."""
    token = "pod-identity-token-6b1f0c"
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(token)
    endpoint = CredentialsEndpoint(sts_s3.assume_role, token=token)
    yield endpoint, token_file
    endpoint.close()


def pod_identity_env(endpoint: CredentialsEndpoint, token_file: Path) -> dict[str, str | None]:
    return {
        **NO_STATIC_KEYS,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint.url + CREDENTIALS_PATH,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
    }


def test_eks_pod_identity_container_credentials(
    sts_s3: StsS3,
    pod_identity: tuple[CredentialsEndpoint, Path],
    admin: Minio,
    source: Path,
    tmp_path: Path,
) -> None:
    endpoint, token_file = pod_identity
    write_runs(source, "pod-identity-run")
    sidecar = start_sidecar(
        source,
        sts_s3.endpoint,
        f"{BUCKET}/pod-identity",
        tmp_path / "s.log",
        "--once",
        env=pod_identity_env(endpoint, token_file),
    )
    assert sidecar.process.wait(60) == 0, sidecar.log
    assert endpoint.served() == 1 and endpoint.refused[CREDENTIALS_PATH] == 0
    assert_mirror(admin, BUCKET, "pod-identity", source)
    assert f"container credentials from {endpoint.url}{CREDENTIALS_PATH}" in sidecar.log
    secrets_absent(sidecar.log, token_file.read_text())

    # A wrong token: the agent refuses, the sidecar says so without showing either token.
    token_file.write_text("not-the-agents-token")
    refused = start_sidecar(
        source,
        sts_s3.endpoint,
        f"{BUCKET}/pod-identity",
        tmp_path / "refused.log",
        "--once",
        env=pod_identity_env(endpoint, token_file),
    )
    assert refused.process.wait(60) == 1
    assert (
        "obtaining credentials (container credentials) failed: the endpoint answered HTTP 401"
        in refused.log
    )
    secrets_absent(refused.log, "not-the-agents-token", "pod-identity-token-6b1f0c")


def test_static_session_token_from_env_and_file(
    sts_s3: StsS3, admin: Minio, source: Path, tmp_path: Path
) -> None:
    creds = sts_s3.assume_role()
    write_runs(source, "session-run")
    keys = {
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
    }
    from_env = start_sidecar(
        source,
        sts_s3.endpoint,
        f"{BUCKET}/session",
        tmp_path / "env.log",
        "--once",
        env={**keys, "AWS_SESSION_TOKEN": creds["Token"]},
    )
    assert from_env.process.wait(60) == 0, from_env.log
    assert_mirror(admin, BUCKET, "session", source)
    assert "static keys from the environment with a session token" in from_env.log
    secrets_absent(from_env.log, creds["Token"], creds["SecretAccessKey"])

    token_file = tmp_path / "session-token"
    token_file.write_text(creds["Token"] + "\n")
    write_runs(source, "session-run-2")
    from_file = start_sidecar(
        source,
        sts_s3.endpoint,
        f"{BUCKET}/session",
        tmp_path / "file.log",
        "--once",
        env={**keys, "RUNLOG_RELAY_SESSION_TOKEN_FILE": str(token_file)},
    )
    assert from_file.process.wait(60) == 0, from_file.log
    assert_mirror(admin, BUCKET, "session", source)

    # Without the token the temporary key is refused: the token really is sent.
    write_runs(source, "session-run-3")
    without = start_sidecar(
        source, sts_s3.endpoint, f"{BUCKET}/session", tmp_path / "none.log", "--once", env=keys
    )
    assert without.process.wait(60) == 1
    secrets_absent(without.log, creds["SecretAccessKey"])


def test_temporary_credentials_renew_before_expiry_without_losing_uploads(
    sts_s3: StsS3,
    pod_identity: tuple[CredentialsEndpoint, Path],
    admin: Minio,
    source: Path,
    tmp_path: Path,
) -> None:
    """Credentials valid for 14 s are renewed 10 s before they expire (the SDK's signing
    margin): every ~4 s. A failed renewal makes the sidecar unready with a clear reason;
    uploads wait in the queue and go up once the agent answers again."""
    endpoint, token_file = pod_identity
    endpoint.lifetime = 14.0
    sidecar = start_sidecar(
        source,
        sts_s3.endpoint,
        f"{BUCKET}/renewal",
        tmp_path / "s.log",
        env=pod_identity_env(endpoint, token_file),
    )
    stop_writing = threading.Event()
    written: list[int] = []

    def keep_writing() -> None:  # a pipeline that keeps rewriting its run log
        while not stop_writing.wait(0.3):
            written.append(len(written))
            (source / "renewal-run").mkdir(exist_ok=True)
            (source / "renewal-run" / "RunLog.json").write_text(json.dumps({"n": len(written)}))

    writer = threading.Thread(target=keep_writing, daemon=True)
    try:
        sidecar.wait_ready()
        writer.start()
        wait_until(lambda: endpoint.served() >= 3, timeout=30, what="two renewals")
        assert sidecar.metric("runlog_relay_uploads_total", result="retry") == 0
        assert sidecar.get("/readyz")[0] == 200

        endpoint.failing = True
        wait_until(
            lambda: (
                sidecar.get("/readyz")[0] == 503
                and "obtaining credentials (container credentials) failed: the endpoint answered"
                " HTTP 500"
                in sidecar.get("/readyz")[1]
            ),
            timeout=30,
            what="not ready while credentials cannot be renewed",
        )
        endpoint.failing = False
        wait_until(lambda: sidecar.get("/readyz")[0] == 200, timeout=60, what="ready again")
    finally:
        stop_writing.set()
        writer.join(5)
    wait_until(
        lambda: sidecar.metric("runlog_relay_pending_files") == 0, timeout=60, what="drained"
    )
    assert sidecar.terminate() == 0, sidecar.log
    assert_mirror(admin, BUCKET, "renewal", source)
    assert "obtained again" in sidecar.log


def test_instance_profile_through_imdsv2(
    sts_s3: StsS3, admin: Minio, source: Path, tmp_path: Path
) -> None:
    imds = CredentialsEndpoint(sts_s3.assume_role)
    try:
        write_runs(source, "instance-run")
        sidecar = start_sidecar(
            source,
            sts_s3.endpoint,
            f"{BUCKET}/instance",
            tmp_path / "s.log",
            "--once",
            "--credentials",
            "instance",
            env={**NO_STATIC_KEYS, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url},
        )
        assert sidecar.process.wait(60) == 0, sidecar.log
        assert imds.served(IMDS_TOKEN_PATH) == 1
        assert imds.served(IMDS_ROLES_PATH + IMDS_ROLE) == 1
        assert_mirror(admin, BUCKET, "instance", source)
        assert "instance profile (IMDSv2" in sidecar.log
    finally:
        imds.close()

    # Only when asked for: auto never reaches for IMDS (runnable's default keys instead).
    auto = start_sidecar(
        source,
        sts_s3.endpoint,
        f"{BUCKET}/instance",
        tmp_path / "auto.log",
        "--once",
        env={**NO_STATIC_KEYS, "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url},
    )
    assert auto.process.wait(60) == 1
    assert "runnable's default minioadmin keys" in auto.log
