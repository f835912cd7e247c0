"""moto's S3 (with IAM checks) and moto's STS on a port of its own, in one process.

IRSA needs an STS that answers AssumeRoleWithWebIdentity, and an S3 that accepts only the
temporary credentials it hands out (checked with their session token). moto keeps both
backends in process-wide state, so they must share a process: this module is that
process (``python -m tests.support.motosts``) and :func:`start_sts_s3_server` starts it.

* S3 (and IAM, for set-up) on one port: moto's usual multi-service application.
* STS on another: ``create_backend_app("sts")``. An unsigned AssumeRoleWithWebIdentity
  goes there (the minio SDK signs nothing for it: the web identity token is the proof).

On AWS, AssumeRoleWithWebIdentity is a public operation (no signature). moto would apply
its IAM signature check to it once checks are on, so :func:`_web_identity_is_public`
exempts exactly that operation, as AWS does. Every other request is checked as usual.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from tests.support.s3server import enable_moto_auth, free_ports, stop_process, wait_for_moto

REPO = Path(__file__).resolve().parents[2]
ROLE_NAME = "runlog-relay-sidecar"
#: moto's default account: where roles, users and assumed roles live.
ACCOUNT_ID = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{ROLE_NAME}"
_S3_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


def _web_identity_is_public() -> None:
    from moto.sts.responses import TokenResponse

    checked = TokenResponse._authenticate_and_authorize_normal_action

    def authenticate(self: Any, resource: str = "*") -> None:
        if self._get_action() == "AssumeRoleWithWebIdentity":
            return  # unsigned on AWS: the token is the credential
        checked(self, resource)

    TokenResponse._authenticate_and_authorize_normal_action = authenticate  # type: ignore[method-assign]


def _serve(s3_port: int, sts_port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    _web_identity_is_public()
    servers = [
        make_server(
            "127.0.0.1",
            s3_port,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=MotoRequestHandler,
        ),
        make_server(
            "127.0.0.1",
            sts_port,
            create_backend_app("sts"),
            threaded=True,
            request_handler=MotoRequestHandler,
        ),
    ]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("serving", flush=True)
    stop.wait()
    for server in servers:
        server.shutdown()


@dataclass
class StsS3:
    """The running pair, and the IAM user that may assume the role (for set-up calls)."""

    process: subprocess.Popen[bytes]
    s3_port: int
    sts_port: int
    user_key: str
    user_secret: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def sts_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sts_port}"

    def assume_role(self, seconds: int = 3600) -> dict[str, str]:
        """Temporary credentials for the role, as STS AssumeRole gives them (a signed call
        by the IAM user, as an EKS Pod Identity agent would make)."""
        sts = boto3.client(
            "sts",
            endpoint_url=self.sts_endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.user_key,
            aws_secret_access_key=self.user_secret,
        )
        answer = sts.assume_role(
            RoleArn=ROLE_ARN, RoleSessionName="pod-identity", DurationSeconds=seconds
        )
        creds = answer["Credentials"]
        return {
            "AccessKeyId": creds["AccessKeyId"],
            "SecretAccessKey": creds["SecretAccessKey"],
            "Token": creds["SessionToken"],
        }

    def stop(self) -> None:
        stop_process(self.process)


def start_sts_s3_server(log_path: Path, *, buckets: tuple[str, ...] = ()) -> StsS3:
    """Start the pair, create ``buckets``, the role (S3 allowed) and a user allowed to
    assume it, then switch moto's signature checks on."""

    s3_port, sts_port = free_ports(2)
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.motosts",
                "--s3-port",
                str(s3_port),
                "--sts-port",
                str(sts_port),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
    try:
        wait_for_moto(process, s3_port, log_path)
        user_key, user_secret = _prepare(f"http://127.0.0.1:{s3_port}", buckets)
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return StsS3(process, s3_port, sts_port, user_key, user_secret)


def _prepare(endpoint: str, buckets: tuple[str, ...]) -> tuple[str, str]:
    """Set-up while moto still accepts anything, then turn its checks on."""

    session = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "bootstrap",
        "aws_secret_access_key": "bootstrap",
    }
    iam = boto3.client("iam", **session)
    # The "agent" user stands in for what assumes the role on a pod's behalf: the EKS Pod
    # Identity agent (the pods.eks.amazonaws.com service on AWS), or a person minting
    # temporary keys for a session-token test.
    iam.create_user(UserName="agent")
    agent_policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["sts:AssumeRole", "s3:*"], "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName="agent", PolicyName="assume", PolicyDocument=json.dumps(agent_policy)
    )
    key = iam.create_access_key(UserName="agent")["AccessKey"]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {  # IRSA: the cluster's OIDC provider
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/eks"},
                "Action": "sts:AssumeRoleWithWebIdentity",
            },
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/agent"},
                "Action": "sts:AssumeRole",
            },
        ],
    }
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName=ROLE_NAME, PolicyName="s3", PolicyDocument=json.dumps(_S3_POLICY))
    s3 = boto3.client("s3", **session)
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    enable_moto_auth(endpoint)
    return key["AccessKeyId"], key["SecretAccessKey"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--s3-port", type=int, required=True)
    parser.add_argument("--sts-port", type=int, required=True)
    options = parser.parse_args()
    _serve(options.s3_port, options.sts_port)
