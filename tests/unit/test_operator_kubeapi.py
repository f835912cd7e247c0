"""KubeApi against a small real HTTP server: status codes → the project's errors,
re-login on 401, merge-patch content type, credentials from kopf.ConnectionInfo."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
import pytest
from aiohttp import web

from runlog_relay.errors import NotFoundError, PermanentError, RetryableError
from runlog_relay.operator.kubeapi import (
    MERGE_PATCH,
    KubeApi,
    configmap_path,
    event_path,
    secret_path,
    store_path,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "status": "Failure", "reason": reason, "message": message}
    return web.json_response(body, status=code)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_paths_are_quoted() -> None:
    assert secret_path("ns", "a") == "/api/v1/namespaces/ns/secrets/a"
    assert configmap_path("ns") == "/api/v1/namespaces/ns/configmaps"
    assert event_path("ns") == "/api/v1/namespaces/ns/events"
    assert (
        store_path("ns", "s", "status")
        == "/apis/runlog-relay.dev/v1alpha1/namespaces/ns/runlogstores/s/status"
    )
    assert secret_path("ns", "a/../b") == "/api/v1/namespaces/ns/secrets/a%2F..%2Fb"


def test_requests_carry_the_token_and_content_types() -> None:
    seen: list[tuple[str, str, str | None, str | None, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append(
            (
                request.method,
                request.path,
                request.headers.get("Authorization"),
                request.headers.get("Content-Type"),
                body,
            )
        )
        return web.json_response({"ok": request.method})

    async def scenario() -> None:
        runner, url = await serve(handler)
        api = KubeApi(lambda: kopf.ConnectionInfo(server=url, token="tok-1"))
        try:
            assert await api.get("/x") == {"ok": "GET"}
            await api.create("/y", {"a": 1})
            await api.merge_patch("/z", {"b": 2})
            assert await api.delete("/w") is True
        finally:
            await api.close()
            await runner.cleanup()

    run(scenario())
    assert [s[:3] for s in seen] == [
        ("GET", "/x", "Bearer tok-1"),
        ("POST", "/y", "Bearer tok-1"),
        ("PATCH", "/z", "Bearer tok-1"),
        ("DELETE", "/w", "Bearer tok-1"),
    ]
    assert seen[1][3] == "application/json" and seen[1][4] == {"a": 1}
    assert seen[2][3] == MERGE_PATCH and seen[2][4] == {"b": 2}


@pytest.mark.parametrize(
    ("code", "reason", "error", "retryable"),
    [
        (403, "Forbidden", PermanentError, False),
        (409, "AlreadyExists", PermanentError, False),
        (422, "Invalid", PermanentError, False),
        (429, "TooManyRequests", RetryableError, True),
        (500, "InternalError", RetryableError, True),
        (503, "ServiceUnavailable", RetryableError, True),
    ],
)
def test_error_statuses_become_project_errors(
    code: int, reason: str, error: type[Exception], retryable: bool
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return status(code, reason, "configmaps is forbidden")

    async def scenario() -> Exception:
        runner, url = await serve(handler)
        api = KubeApi(lambda: kopf.ConnectionInfo(server=url))
        try:
            with pytest.raises(error) as caught:
                await api.create("/api/v1/namespaces/n/configmaps", {"x": 1})
            return caught.value
        finally:
            await api.close()
            await runner.cleanup()

    exc = run(scenario())
    assert isinstance(exc, RetryableError) == retryable
    assert getattr(exc, "code", None) == reason
    assert f"{code} {reason}" in str(exc) and "configmaps is forbidden" in str(exc)


def test_not_found_is_none_for_get_and_false_for_delete() -> None:
    async def handler(request: web.Request) -> web.Response:
        return status(404, "NotFound", 'secrets "x" not found')

    async def scenario() -> None:
        runner, url = await serve(handler)
        api = KubeApi(lambda: kopf.ConnectionInfo(server=url))
        try:
            assert await api.get("/a") is None
            assert await api.delete("/a") is False
            with pytest.raises(NotFoundError):
                await api.merge_patch("/a", {})
        finally:
            await api.close()
            await runner.cleanup()

    run(scenario())


def test_a_401_logs_in_again_once() -> None:
    tokens = iter(["expired", "fresh", "never-used"])
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer fresh":
            return status(401, "Unauthorized", "Unauthorized")
        return web.json_response({"items": []})

    async def scenario() -> None:
        runner, url = await serve(handler)
        api = KubeApi(lambda: kopf.ConnectionInfo(server=url, token=next(tokens)))
        try:
            assert await api.get("/list") == {"items": []}
            assert await api.get("/list") == {"items": []}  # the fresh session is kept
        finally:
            await api.close()
            await runner.cleanup()

    run(scenario())
    assert seen == ["Bearer expired", "Bearer fresh", "Bearer fresh"]


def test_a_persistent_401_is_permanent() -> None:
    async def handler(request: web.Request) -> web.Response:
        return status(401, "Unauthorized", "Unauthorized")

    async def scenario() -> None:
        runner, url = await serve(handler)
        api = KubeApi(lambda: kopf.ConnectionInfo(server=url, token="bad"))
        try:
            with pytest.raises(PermanentError) as caught:
                await api.get("/x")
            assert caught.value.code == "Unauthorized"
        finally:
            await api.close()
            await runner.cleanup()

    run(scenario())


def test_unreachable_server_is_retryable() -> None:
    async def scenario() -> None:
        api = KubeApi(lambda: kopf.ConnectionInfo(server="http://127.0.0.1:9"))
        try:
            with pytest.raises(RetryableError) as caught:
                await api.get("/x")
            assert caught.value.code == "Unreachable"
        finally:
            await api.close()

    run(scenario())


def test_no_credentials_is_a_login_error() -> None:
    api = KubeApi(lambda: None)
    with pytest.raises(kopf.LoginError, match="KUBECONFIG"):
        api.login()


def test_non_json_error_bodies_still_give_a_status() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>")

    async def scenario() -> None:
        runner, url = await serve(handler)
        api = KubeApi(lambda: kopf.ConnectionInfo(server=url))
        try:
            with pytest.raises(RetryableError, match="502 HTTP502"):
                await api.get("/x")
        finally:
            await api.close()
            await runner.cleanup()

    run(scenario())


def test_new_credentials_never_cut_a_request_in_flight() -> None:
    """kopf's login handler logs in again at any moment; a request another task has in
    flight on the old session must still get its answer."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        return web.json_response({"path": request.path})

    async def scenario() -> None:
        runner, url = await serve(handler)
        api = KubeApi(lambda: kopf.ConnectionInfo(server=url, token="t"))
        try:
            slow = asyncio.create_task(api.request("GET", "/slow"))
            await asyncio.sleep(0.05)
            api.login()  # new credentials: a new session for what comes next
            assert await api.request("GET", "/fast") == {"path": "/fast"}
            release.set()
            assert await slow == {"path": "/slow"}
        finally:
            await api.close()
            await runner.cleanup()

    run(scenario())
