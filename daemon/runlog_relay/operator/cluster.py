"""Whether the cluster runs native sidecars: its API server's and its kubelets' versions.

A native sidecar is an init container with ``restartPolicy: Always`` (KEP 753). An API
server before 1.29 (or 1.28 with the SidecarContainers gate off, its default) drops the
field and then refuses the pod (probes on an init container); a 1.29+ control plane with
older kubelets admits the pod and leaves it stuck in ``Init``. So ``native_sidecar: auto``
injects a native sidecar only when the API server *and every node's kubelet* are 1.29 or
newer, and a classic container otherwise.

:class:`ClusterVersions` reads ``/version`` and the nodes' ``status.nodeInfo.kubeletVersion``
(in pages) every ``interval`` seconds; every replica does (it is read-only, and each one
answers admission requests). Nodes it may not list (no RBAC) leave the decision to the
API server's version, with a warning; nothing known yet means classic, which every API
server accepts.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Protocol
from urllib.parse import quote

from runlog_relay.errors import PermanentError, RelayError

__all__ = ["NATIVE_SIDECARS_SINCE", "ClusterVersions", "parse_version"]

log = logging.getLogger(__name__)

#: The first minor version whose API server and kubelet both run native sidecars by default.
NATIVE_SIDECARS_SINCE = (1, 29)
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")
_PAGE = 500


class _Getter(Protocol):
    async def get(self, path: str) -> dict[str, Any] | None: ...


def parse_version(text: Any) -> tuple[int, int] | None:
    """``(major, minor)`` of ``v1.30.2-eks-1234``; None when it is not a version."""
    match = _VERSION.match(str(text or "").strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


class ClusterVersions:
    def __init__(self, api: _Getter, *, interval: float = 300.0) -> None:
        self._api = api
        self._interval = interval
        self.server: tuple[int, int] | None = None
        self.oldest_kubelet: tuple[int, int] | None = None
        """The oldest kubelet of the nodes; None when nodes are unknown or none."""
        self.nodes_known = False
        self._nodes_denied_reported = False
        self.looked = asyncio.Event()
        """Set after the first look, answered or not: the webhook serves from then on, so
        no pod is decided on a cluster not looked at yet."""

    @property
    def native_sidecars(self) -> bool | None:
        """True where native sidecars work; False where they do not; None: unknown."""
        if self.server is None:
            return None
        if self.server < NATIVE_SIDECARS_SINCE:
            return False
        return self.oldest_kubelet is None or self.oldest_kubelet >= NATIVE_SIDECARS_SINCE

    def describe(self) -> str:
        server = ".".join(map(str, self.server)) if self.server else "unknown"
        if self.oldest_kubelet:
            kubelets = ".".join(map(str, self.oldest_kubelet))
        else:
            kubelets = "unknown" if not self.nodes_known else "no nodes"
        return f"API server {server}, oldest kubelet {kubelets}"

    async def refresh(self) -> None:
        body = await self._api.get("/version")
        version = body or {}
        self.server = parse_version(version.get("gitVersion")) or parse_version(
            f"{version.get('major', '')}.{str(version.get('minor', '')).rstrip('+')}"
        )
        try:
            self.oldest_kubelet = await self._oldest_kubelet()
            self.nodes_known = True
        except PermanentError as exc:
            if exc.code not in ("Forbidden", "HTTP403"):
                raise
            self.nodes_known, self.oldest_kubelet = False, None
            if not self._nodes_denied_reported:
                log.warning(
                    "may not list nodes (%s): native sidecars are chosen from the API"
                    " server's version alone; a node with an older kubelet would hold pods"
                    " in Init",
                    exc,
                )
                self._nodes_denied_reported = True

    async def _oldest_kubelet(self) -> tuple[int, int] | None:
        oldest: tuple[int, int] | None = None
        token = ""
        while True:
            path = f"/api/v1/nodes?limit={_PAGE}" + (f"&continue={quote(token)}" if token else "")
            page = await self._api.get(path) or {}
            for node in page.get("items") or []:
                kubelet = parse_version(
                    ((node.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion")
                )
                if kubelet is not None and (oldest is None or kubelet < oldest):
                    oldest = kubelet
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return oldest

    async def run(self) -> None:
        previous: bool | None = None
        while True:
            try:
                await self.refresh()
            except RelayError as exc:
                log.warning("cannot read the cluster's versions: %s", exc)
            except Exception:  # the loop must outlive any one bad round
                log.exception("cannot read the cluster's versions")
            self.looked.set()
            if self.native_sidecars != previous:
                previous = self.native_sidecars
                log.info(
                    "%s: injecting %s sidecars (native_sidecar auto)",
                    self.describe(),
                    "native" if previous else "classic",
                )
            await asyncio.sleep(self._interval)
