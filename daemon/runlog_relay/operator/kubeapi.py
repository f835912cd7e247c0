"""The few Kubernetes REST calls the operator makes besides kopf's own.

kopf watches and patches the RunLogStores, but ships no general client, and the
operator needs a few more calls: read a Secret, create/patch/delete a ConfigMap, patch a
store's ``/status``, read a store, post an Event, and (self-signed webhook TLS) read and
JSON-patch the webhook configurations' ``caBundle``. Rather than a second Kubernetes
client library (kubernetes, kubernetes_asyncio and pykube-ng each pull in a stack and
their own config loading, and the official client reads ``KUBECONFIG`` at import time),
this module speaks REST over aiohttp, which kopf already depends on, with the *same*
:class:`kopf.ConnectionInfo` the operator logs in with (:func:`default_login`:
in-cluster service account, else ``KUBECONFIG``). A 401 triggers one fresh login
(service-account tokens rotate).

Every failure leaves here as the project's own error (:mod:`runlog_relay.errors`):
``NotFoundError`` for 404, ``RetryableError`` for timeouts, refused connections, 429 and
5xx, ``PermanentError`` (with the Kubernetes ``reason`` as ``code``) for the rest. Secret
bodies are returned to the caller and never logged here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf
import yaml

from runlog_relay.config.crd import GROUP, PLURAL, VERSION
from runlog_relay.errors import NotFoundError, PermanentError, RelayError, RetryableError

__all__ = [
    "KubeApi",
    "configmap_path",
    "default_login",
    "event_path",
    "namespace_path",
    "secret_path",
    "store_path",
]

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

#: Returns the credentials to use, or None when there are none.
Login = Callable[[], kopf.ConnectionInfo | None]


def default_login(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then ``KUBECONFIG`` / ``~/.kube/config``."""
    settings = settings or kopf.OperatorSettings()
    try:
        return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
    except OSError as exc:
        raise kopf.LoginError(
            f"cannot read Kubernetes credentials from {exc.filename}: {exc.strerror}"
        ) from exc
    except (yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
        # Only the type: a parser's message may quote a line of the file, token included.
        raise kopf.LoginError(
            f"the kubeconfig (KUBECONFIG or ~/.kube/config) is malformed ({type(exc).__name__})"
        ) from None


def _name(value: str) -> str:
    return quote(value, safe="")


def namespace_path(name: str) -> str:
    return f"/api/v1/namespaces/{_name(name)}"


def secret_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{_name(namespace)}/secrets"
    return f"{base}/{_name(name)}" if name else base


def configmap_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{_name(namespace)}/configmaps"
    return f"{base}/{_name(name)}" if name else base


def event_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{_name(namespace)}/events"


def store_path(namespace: str, name: str, subresource: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{_name(namespace)}/{PLURAL}/{_name(name)}"
    return f"{path}/{subresource}" if subresource else path


class KubeApi:
    """A minimal async Kubernetes REST client on kopf's connection info."""

    def __init__(self, login: Login = default_login, *, timeout: float = 30.0) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._session_info: kopf.ConnectionInfo | None = None
        self._retired: list[aiohttp.ClientSession] = []
        self._in_flight: dict[int, int] = {}  # id(session) → requests it carries now

    def login(self) -> kopf.ConnectionInfo:
        """Fetch fresh credentials (also what kopf's login handler returns)."""
        info = self._login()
        if info is None:
            raise kopf.LoginError(
                "no Kubernetes credentials: not in a pod with a service account and no"
                " KUBECONFIG / ~/.kube/config"
            )
        self._info = info
        return info

    async def close(self) -> None:
        for session in [self._session, *self._retired]:
            if session is not None:
                await session.close()
        self._session, self._retired = None, []

    async def _session_for(self, info: kopf.ConnectionInfo) -> aiohttp.ClientSession:
        if self._session is not None and not self._session.closed and self._session_info is info:
            return self._session
        # New credentials (kopf's login handler logs in again, a token rotated): a new
        # session. The old one may still carry requests of other tasks: it is closed once
        # it carries none, never under them.
        if self._session is not None:
            self._retired.append(self._session)
        ssl_context = info.as_ssl_context() if info.server.startswith("https") else False
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=20),
            headers={"User-Agent": "runlog-relay-operator", **info.as_http_headers()},
            timeout=self._timeout,
            trust_env=info.trust_env,
        )
        self._session_info = info
        await self._close_idle()
        return self._session

    async def _close_idle(self) -> None:
        for session in list(self._retired):
            if not self._in_flight.get(id(session)):
                self._retired.remove(session)
                await session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call; the decoded JSON answer, or one of the project's errors. ``body`` is
        an object, or a list of operations for a JSON patch."""
        payload: Any = None
        if isinstance(body, Mapping):
            payload = dict(body)
        elif body is not None:
            payload = [dict(item) for item in body]
        for attempt in (0, 1):
            info = self._info or self.login()
            session = await self._session_for(info)
            session_info = info
            url = info.server.rstrip("/") + path
            self._in_flight[id(session)] = self._in_flight.get(id(session), 0) + 1
            try:
                async with session.request(
                    method,
                    url,
                    json=payload,
                    headers={"Content-Type": content_type} if body is not None else None,
                ) as response:
                    if response.status == 401 and attempt == 0:
                        # Rotated token: log in again once, then let the error through.
                        if self._info is session_info:
                            self._info = None
                        continue
                    answer = await _json(response)
                    if response.status >= 400:
                        raise _error(method, path, response.status, answer)
                    return answer
            except RelayError:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise RetryableError(
                    f"Kubernetes API {method} {path}: {type(exc).__name__}", code="Unreachable"
                ) from exc
            finally:
                self._in_flight[id(session)] -= 1
                if not self._in_flight[id(session)]:
                    del self._in_flight[id(session)]
                    if session in self._retired:
                        await self._close_idle()
        raise PermanentError(f"Kubernetes API {method} {path}: unauthorized", code="Unauthorized")

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", path)
        except NotFoundError:
            return None

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A PUT: with the body's ``metadata.resourceVersion`` it is compare-and-swap
        (409 Conflict when the object changed since it was read)."""
        return await self.request("PUT", path, body=body)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def json_patch(self, path: str, ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """An RFC 6902 patch (its ``test`` operations guard against concurrent edits)."""
        return await self.request("PATCH", path, body=ops, content_type=JSON_PATCH)

    async def delete(self, path: str) -> bool:
        """True when deleted, False when it was already gone."""
        try:
            await self.request("DELETE", path)
        except NotFoundError:
            return False
        return True


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        payload = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _error(method: str, path: str, status: int, payload: Mapping[str, Any]) -> RelayError:
    reason = str(payload.get("reason") or f"HTTP{status}")
    detail = str(payload.get("message") or "").strip()
    message = f"Kubernetes API {method} {path}: {status} {reason}" + (
        f": {detail}" if detail else ""
    )
    if status == 404:
        return NotFoundError(message, code="NotFound")
    if status == 429 or status >= 500:
        return RetryableError(message, code=reason)
    return PermanentError(message, code=reason)
