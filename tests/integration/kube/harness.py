"""
The emulator served over real HTTP on 127.0.0.1 from its own thread, and a sync client for tests.

The tests are synchronous: the emulator's event loop lives in a background thread,
the test talks to it over HTTP with the stdlib (``http.client``), exactly like any
other API client would. In-process access to the emulator (for kmock's DSL or its
``objects`` history) goes through :meth:`KubeHarness.call`, which runs in the
emulator's loop, so that nothing races with the requests being served.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import http.client
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp.test_utils

from .emulator import (
    DEFAULT_NAMESPACES,
    DEFAULT_RESOURCES,
    AccessRecord,
    RealisticKubernetesEmulator,
    ResourceSpec,
)
from .waiting import DEFAULT_TIMEOUT, wait_for

T = TypeVar("T")

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


class KubeApiError(Exception):
    """A non-2xx answer of the API, with the parsed v1 Status (if any)."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.method, self.path, self.status, self.body = method, path, status, body
        self.reason = body.get("reason") if isinstance(body, dict) else None
        self.message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{method} {path} -> HTTP {status} {self.reason}: {self.message}")


class KubeEmulatorServer:
    """Runs :class:`RealisticKubernetesEmulator` behind aiohttp on 127.0.0.1 in a daemon thread."""

    def __init__(
        self,
        resources: Iterable[ResourceSpec] = DEFAULT_RESOURCES,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
        host: str = "127.0.0.1",
    ) -> None:
        self._resources = list(resources)
        self._namespaces = list(namespaces)
        self._host = host
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopper: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.emulator: RealisticKubernetesEmulator | None = None
        self.url: str = ""

    def start(self, timeout: float = 10) -> None:
        self._thread = threading.Thread(target=self._main, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"The Kubernetes emulator did not start in {timeout}s.")
        if self._error is not None:
            raise RuntimeError("The Kubernetes emulator failed to start.") from self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported on start/stop, never lost silently
            self._error = e
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopper = asyncio.Event()
        emulator = RealisticKubernetesEmulator(
            initial_resources=self._resources, initial_namespaces=self._namespaces
        )
        async with emulator:
            server = aiohttp.test_utils.RawTestServer(emulator, host=self._host, port=0)
            await server.start_server()
            try:
                self.emulator = emulator
                self.url = f"http://{self._host}:{server.port}"
                self._started.set()
                await self._stopper.wait()
            finally:
                emulator.close_watches()  # or the server waits for the streams on shutdown
                await asyncio.sleep(0)
                await server.close()

    def stop(self, timeout: float = 10) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopper is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                self._loop.call_soon_threadsafe(self._stopper.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"The Kubernetes emulator did not stop in {timeout}s.")
        self._thread = None
        if self._error is not None:
            raise RuntimeError("The Kubernetes emulator has failed.") from self._error

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (sync or async) in the emulator's loop; return the result."""
        if self._loop is None:
            raise RuntimeError("The Kubernetes emulator is not running.")

        async def runner() -> T:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            runner(), self._loop
        )
        return future.result(timeout)


class KubeClient:
    """
    A minimal synchronous Kubernetes API client over plain HTTP (stdlib only).

    Resources are named as ``'v1/configmaps'``, ``'apps/v1/deployments'``,
    ``'runlog-relay.dev/v1alpha1/runlogstores'``, or by a plural/kind/shortname
    served by the emulator (``'configmaps'``, ``'RunLogStore'``, ``'rls'``).
    For namespaced resources, ``namespace=None`` means ``'default'`` for single
    objects and "all namespaces" for lists, as with kubectl.
    """

    def __init__(
        self, url: str, resolve: Callable[[str], ResourceSpec], timeout: float = 10
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.url = url
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 80
        self._resolve = resolve
        self._timeout = timeout

    # --- raw HTTP ---------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call; the parsed JSON answer, or :class:`KubeApiError` for non-2xx answers."""
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace")
        if not 200 <= status < 300:
            raise KubeApiError(method, path, status, data)
        return data

    # --- paths -----------------------------------------------------------------------------------

    def spec(self, resource: str | ResourceSpec) -> ResourceSpec:
        return resource if isinstance(resource, ResourceSpec) else self._resolve(resource)

    def path(
        self,
        resource: str | ResourceSpec,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        *,
        collection: bool = False,
    ) -> str:
        spec = self.spec(resource)
        root = f"/apis/{spec.group}/{spec.version}" if spec.group else f"/api/{spec.version}"
        if spec.namespaced and (namespace is not None or not collection):
            root += f"/namespaces/{namespace or 'default'}"
        path = f"{root}/{spec.plural}"
        if name is not None:
            path += f"/{name}"
            if subresource:
                path += f"/{subresource}"
        return path

    # --- verbs -----------------------------------------------------------------------------------

    def create(
        self, resource: str | ResourceSpec, body: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        spec = self.spec(resource)
        namespace = namespace or (body.get("metadata") or {}).get("namespace")
        return self.request("POST", self.path(spec, namespace), dict(body))

    def get(
        self, resource: str | ResourceSpec, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        return self.request("GET", self.path(resource, namespace, name))

    def find(
        self, resource: str | ResourceSpec, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """Like :meth:`get`, but ``None`` if the object does not exist."""
        try:
            return self.get(resource, name, namespace)
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise

    def list(
        self,
        resource: str | ResourceSpec,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[dict[str, Any]]:
        params = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        answer = self.request("GET", self.path(resource, namespace, collection=True), params=params)
        return list(answer["items"])

    def patch(
        self,
        resource: str | ResourceSpec,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        type: str = "merge",
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """PATCH with type 'merge' (a dict), 'json' (a list of ops) or 'strategic'."""
        return self.request(
            "PATCH",
            self.path(resource, namespace, name, subresource),
            patch,
            content_type=PATCH_CONTENT_TYPES[type],
        )

    def patch_status(
        self,
        resource: str | ResourceSpec,
        name: str,
        status: Mapping[str, Any],
        namespace: str | None = None,
    ) -> dict[str, Any]:
        return self.patch(resource, name, {"status": dict(status)}, namespace, subresource="status")

    def replace(
        self,
        resource: str | ResourceSpec,
        name: str,
        body: Mapping[str, Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return self.request("PUT", self.path(resource, namespace, name, subresource), dict(body))

    def delete(
        self,
        resource: str | ResourceSpec,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        options = {"propagationPolicy": propagation_policy} if propagation_policy else None
        try:
            return self.request("DELETE", self.path(resource, namespace, name), options)
        except KubeApiError as e:
            if missing_ok and e.status == 404:
                return None
            raise

    # --- conveniences ----------------------------------------------------------------------------

    def ensure_namespace(self, name: str) -> dict[str, Any]:
        existing = self.find("v1/namespaces", name)
        return existing or self.create("v1/namespaces", {"metadata": {"name": name}})

    def events(
        self,
        namespace: str | None = None,
        *,
        involved_name: str | None = None,
        involved_kind: str | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Core v1 Events, optionally for one involved object (as kopf posts them)."""
        fields = []
        if involved_name:
            fields.append(f"involvedObject.name={involved_name}")
        if involved_kind:
            fields.append(f"involvedObject.kind={involved_kind}")
        return self.list("v1/events", namespace, field_selector=",".join(fields) or None)


class KubeHarness(KubeClient):
    """The ``kube`` fixture: a running emulator, a sync client to it, and in-process access."""

    def __init__(self, server: KubeEmulatorServer) -> None:
        assert server.emulator is not None
        self.server = server
        self.emulator: RealisticKubernetesEmulator = server.emulator
        super().__init__(server.url, resolve=lambda name: self.call(self.emulator.find_spec, name))

    @classmethod
    def start(
        cls,
        resources: Iterable[ResourceSpec] = DEFAULT_RESOURCES,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
    ) -> KubeHarness:
        server = KubeEmulatorServer(resources=resources, namespaces=namespaces)
        server.start()
        return cls(server)

    def stop(self) -> None:
        self.server.stop()

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10, **kwargs: Any) -> T:
        """Run ``fn`` in the emulator's loop (safe access to ``self.emulator``, its kmock DSL)."""
        return self.server.call(fn, *args, timeout=timeout, **kwargs)

    def connection_info(self) -> Any:
        """``kopf.ConnectionInfo`` for the emulator (for code that needs a login callable)."""
        import kopf  # only for operator tests; the rest of the harness works without kopf

        return kopf.ConnectionInfo(server=self.url, insecure=True, default_namespace="default")

    def bulk_create(
        self,
        resource: str | ResourceSpec,
        objects: Iterable[tuple[str | None, Mapping[str, Any]]],
        timeout: float = 600,
    ) -> int:
        """Create many ``(namespace, body)`` objects in the emulator's own loop, with the
        same semantics as a POST but no HTTP per object (seeding thousands of them)."""
        spec = self.spec(resource)

        def create() -> int:
            count = 0
            for namespace, body in objects:
                if namespace is not None:
                    self.emulator.ensure_namespace(namespace)
                self.emulator.create_object(spec, namespace, body)
                count += 1
            return count

        return self.call(create, timeout=timeout)

    def add_resource(self, spec: ResourceSpec) -> None:
        """Serve one more resource kind (it appears in discovery at once)."""
        self.call(self.emulator.register_resource, spec)

    @property
    def specs(self) -> builtins.list[ResourceSpec]:
        return self.call(lambda: self.emulator.specs)

    def access_log(self) -> builtins.list[AccessRecord]:
        """All requests served so far: method, path with the query, HTTP status."""
        return self.call(lambda: list(self.emulator.access_log))

    def active_watches(self) -> dict[tuple[tuple[str, str, str], str | None], int]:
        """Open watch-streams by ((group, version, plural), namespace); None = cluster-wide."""
        return self.call(lambda: {k: v for k, v in self.emulator.active_watches.items() if v > 0})

    def internal_errors(self) -> builtins.list[str]:
        """Tracebacks of requests that crashed inside the emulator (bugs, not API errors)."""
        return self.call(lambda: list(self.emulator.internal_errors))

    def history(
        self, resource: str | ResourceSpec, name: str, namespace: str | None = None
    ) -> builtins.list[dict[str, Any] | None]:
        """All stored versions of an object (``None`` marks a deletion), oldest first."""
        spec = self.spec(resource)
        ns = (namespace or "default") if spec.namespaced else None

        def read() -> builtins.list[dict[str, Any] | None]:
            key = (spec.ref, ns, name)
            if key not in self.emulator.objects:
                return []
            return [None if v is None else v.raw for v in self.emulator.objects[key].history]

        return self.call(read)

    def describe(self, last: int = 15) -> str:
        """A short dump for failure messages: the last requests and all live objects' names."""

        def read() -> tuple[list[AccessRecord], list[str]]:
            names = [
                f"{obj['kind']} {obj['metadata'].get('namespace', '-')}/{obj['metadata']['name']}"
                f" rv={obj['metadata'].get('resourceVersion')}"
                + (" (deleting)" if obj["metadata"].get("deletionTimestamp") else "")
                for obj in self.emulator.live_objects()
                if obj.get("kind") not in ("Event", "Namespace")
            ]
            return list(self.emulator.access_log[-last:]), names

        try:
            records, names = self.call(read, timeout=2)
        except Exception as e:  # never mask the original failure with a failure to describe it
            return f"(the emulator cannot be described: {e!r})"
        lines = [
            "Last API requests:",
            *(f"  {r}" for r in records),
            "Objects:",
            *(f"  {n}" for n in names),
        ]
        return "\n".join(lines)

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        interval: float = 0.02,
        message: str | None = None,
        checks: Sequence[Callable[[], None]] = (),
    ) -> T:
        """
        Poll ``predicate`` until truthy; fail with ``message`` and the emulator's state if not.

        API errors (e.g. 404 while the object does not exist yet), assertions and
        missing keys inside the predicate count as "not yet".
        """
        return wait_for(
            predicate,
            timeout,
            interval=interval,
            message=message,
            checks=checks,
            context=self.describe,
            retry_on=(AssertionError, LookupError, KubeApiError),
        )

    def wait_gone(
        self,
        resource: str | ResourceSpec,
        name: str,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        what = f"{resource} {namespace or 'default'}/{name} to be gone"
        self.wait_for(lambda: self.find(resource, name, namespace) is None, timeout, message=what)

    def write_kubeconfig(self, path: str, namespace: str = "default") -> str:
        """A kubeconfig file pointing to the emulator (for code that logs in by kubeconfig)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulator",
            "clusters": [
                {
                    "name": "emulator",
                    "cluster": {"server": self.url, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f)  # JSON is valid YAML
        return path
