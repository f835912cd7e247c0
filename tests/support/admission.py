"""Talk to an admission webhook the way the Kubernetes API server does.

An AdmissionReview goes over HTTPS to ``https://<service>.<namespace>.svc:<port>/<path>``:
the server's certificate must chain to the ``caBundle`` of the webhook configuration and
name the Service. The tests connect to 127.0.0.1 but verify the certificate against the
Service's DNS name, with the caBundle read from the configuration in the emulator.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

import jsonpatch


@dataclass
class ReviewAnswer:
    status: int
    body: dict[str, Any]

    @property
    def response(self) -> dict[str, Any]:
        return dict(self.body["response"])

    @property
    def allowed(self) -> bool:
        return bool(self.response["allowed"])

    @property
    def warnings(self) -> list[str]:
        return list(self.response.get("warnings") or [])

    @property
    def patch(self) -> list[dict[str, Any]]:
        encoded = self.response.get("patch")
        if not encoded:
            return []
        assert self.response.get("patchType") == "JSONPatch"
        return list(json.loads(base64.b64decode(encoded)))

    def patched(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with the answer's JSONPatch applied (RFC 6902, by the jsonpatch library)."""
        return jsonpatch.apply_patch(obj, self.patch) if self.patch else obj


class _VerifiedConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1:port, verifying the certificate for ``server_name``."""

    def __init__(self, server_name: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(server_name, port, context=context, timeout=10)
        self._server_name = server_name
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self._server_name)


class AdmissionClient:
    def __init__(self, port: int, ca_pem: bytes, server_name: str) -> None:
        self.port = port
        self.server_name = server_name
        self.context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))

    def post(self, path: str, review: dict[str, Any]) -> ReviewAnswer:
        conn = _VerifiedConnection(self.server_name, self.port, self.context)
        try:
            conn.request(
                "POST", path, body=json.dumps(review), headers={"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        body = json.loads(raw) if raw else {}
        return ReviewAnswer(response.status, body)


def admission_review(
    obj: dict[str, Any],
    *,
    group: str,
    version: str,
    resource: str,
    kind: str,
    namespace: str,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    dry_run: bool = False,
    name: str | None = None,
    user: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``admission.k8s.io/v1`` AdmissionReview request as the API server sends it;
    ``user`` is its ``userInfo`` (default: the Job controller, which creates Job pods)."""
    gvr = {"group": group, "version": version, "resource": resource}
    gvk = {"group": group, "version": version, "kind": kind}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "namespace": namespace,
        "operation": operation,
        "userInfo": user
        or {
            "username": "system:serviceaccount:kube-system:job-controller",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system"],
        },
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    if name is not None:
        request["name"] = name
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def pod_review(pod: dict[str, Any], namespace: str, **kwargs: Any) -> dict[str, Any]:
    return admission_review(
        pod,
        group="",
        version="v1",
        resource="pods",
        kind="Pod",
        namespace=namespace,
        name=(pod.get("metadata") or {}).get("name") or "",
        **kwargs,
    )
