"""The few Kubernetes API calls scale-out needs: one Lease per replica, and the list of
the group's Leases (coordination.k8s.io/v1). Used by :mod:`runlog_relay.sidecar.shard`.

Deliberately small, over urllib3 (already a dependency through minio): the sidecar has
no Kubernetes client library, and a pod's sidecar must stay light. In a pod it talks to
the API server as its service account (the projected token is re-read for each request,
since kubelet rotates it); ``api_url`` points it elsewhere (tests: the emulator).

RBAC it needs, in the Leases' namespace only: ``leases`` get, list, create, update,
delete (see docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

from runlog_relay.errors import ConfigError, RetryableError

__all__ = ["GROUP_LABEL", "LeaseApi", "LeaseRecord", "in_cluster_namespace"]

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Label on every replica's Lease, valued with the group name.
GROUP_LABEL = "runlog-relay.dev/shard-group"
_TIMEOUT = urllib3.Timeout(connect=5.0, read=10.0)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a replica's Lease says: who holds it and a value that changes at each renewal."""

    holder: str
    renewed: str  #: spec.renewTime as written (compared for change, never with our clock)
    duration: float  #: spec.leaseDurationSeconds


def in_cluster_namespace() -> str:
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi:
    """Create/renew/delete one Lease and list a group's Leases in one namespace."""

    def __init__(self, api_url: str, namespace: str, group: str) -> None:
        self._group = group
        self._namespace = namespace
        if api_url:
            self._base = api_url.rstrip("/")
            self._token: Path | None = None
            self._http = urllib3.PoolManager(maxsize=1, timeout=_TIMEOUT, retries=False)
        else:
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ConfigError("no KUBERNETES_SERVICE_HOST: not in a pod; set shard.apiUrl")
            host = f"[{host}]" if ":" in host else host
            self._base = f"https://{host}:{port}"
            self._token = SERVICE_ACCOUNT / "token"
            self._http = urllib3.PoolManager(
                maxsize=1,
                timeout=_TIMEOUT,
                retries=False,
                cert_reqs="CERT_REQUIRED",
                ca_certs=str(SERVICE_ACCOUNT / "ca.crt"),
            )
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace, safe='')}/leases"

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token is not None:
            try:
                headers["Authorization"] = "Bearer " + self._token.read_text().strip()
            except OSError as exc:
                raise RetryableError(f"cannot read the service account token: {exc}") from None
        try:
            response = self._http.request(
                method,
                self._base + path,
                body=None if body is None else json.dumps(body).encode(),
                headers=headers,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise RetryableError(f"Kubernetes API {method} {path}: {type(exc).__name__}") from None
        if response.status == 404:
            return None
        if response.status >= 300:
            reason = ""
            with contextlib.suppress(ValueError, AttributeError):
                reason = json.loads(response.data).get("message", "")
            raise RetryableError(f"Kubernetes API {method} {path}: {response.status} {reason}")
        return json.loads(response.data) if response.data else {}

    def _name(self, identity: str) -> str:
        return f"{self._group}-{identity}"[:253]

    def renew(self, identity: str, duration: float) -> None:
        """Create this replica's Lease, or renew it (a new renewTime)."""
        name = self._name(identity)
        now = _now()
        spec = {
            "holderIdentity": identity,
            "leaseDurationSeconds": max(1, round(duration)),
            "renewTime": now,
        }
        current = self._request("GET", f"{self._path}/{quote(name, safe='')}")
        if current is None:
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "labels": {GROUP_LABEL: self._group}},
                "spec": {**spec, "acquireTime": now},
            }
            self._request("POST", self._path, lease)
            return
        current.setdefault("spec", {}).update(spec)
        # A PUT with the resourceVersion read: a conflict (409) is retried next round.
        self._request("PUT", f"{self._path}/{quote(name, safe='')}", current)

    def release(self, identity: str) -> None:
        """Delete this replica's Lease: the others take its runs at their next look."""
        self._request("DELETE", f"{self._path}/{quote(self._name(identity), safe='')}")

    def members(self) -> list[LeaseRecord]:
        """Every Lease of the group (live or not: the caller decides by observation)."""
        query = urlencode({"labelSelector": f"{GROUP_LABEL}={self._group}"})
        listed = self._request("GET", f"{self._path}?{query}") or {}
        records = []
        for item in listed.get("items") or []:
            spec = item.get("spec") or {}
            holder = spec.get("holderIdentity")
            if holder:
                records.append(
                    LeaseRecord(
                        holder=str(holder),
                        renewed=str(spec.get("renewTime") or ""),
                        duration=float(spec.get("leaseDurationSeconds") or 0),
                    )
                )
        return records
