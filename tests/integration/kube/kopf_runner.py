"""
Run a real kopf operator in its own thread and event loop, connected to the emulator.

The operator is what a test passes: a ``kopf.OperatorRegistry`` (e.g. the product's
``build_operator(..., login=kube.connection_info).registry``), a callable that registers
handlers on a fresh registry, or a module path whose module-level ``@kopf.on...``
handlers register at import (see :func:`load_registry`). The runner runs a *copy* of
that registry in which every login handler is replaced by one returning
``kopf.ConnectionInfo(server=<emulator>, insecure=True)``: no kubeconfig, no
``kubernetes`` package, and the operator can never reach a real cluster.

``kopf.operator()`` runs with ``standalone=True`` (no peering), either cluster-wide
or for the given namespaces, with a ``stop_flag`` (set on stop) and a ``ready_flag``
(awaited on start). After the ready flag, the runner also waits until the emulator
sees the operator's watch-streams for every resource its handlers serve, so a test
never races with the operator's initial listing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import sys
import threading
import time
import types
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

import kopf
from kopf._core.intents import causes as kopf_causes  # the Activity enum: not re-exported
from kopf._core.intents import registries as kopf_registries  # GenericRegistry: not re-exported

from .emulator import ResourceSpec
from .harness import KubeApiError, KubeHarness
from .waiting import DEFAULT_TIMEOUT, wait_for

T = TypeVar("T")

OperatorTarget = (
    kopf.OperatorRegistry | Callable[[kopf.OperatorRegistry], Any] | str | types.ModuleType
)
SettingsArg = kopf.OperatorSettings | Callable[[kopf.OperatorSettings], Any] | None

LOGIN_HANDLER_ID = "kube-harness-login"

# Logged by kopf whenever it runs outside the main thread, which is always the case here.
_EXPECTED_WARNINGS = ("OS signals are ignored: running not in the main thread.",)


class OperatorCrashed(AssertionError):
    """The operator's thread has exited or failed while it was expected to run."""


class OperatorLogErrors(AssertionError):
    """The operator logged errors (failed handlers, failed API calls) during the test."""


def harness_settings(name: str) -> kopf.OperatorSettings:
    """kopf settings for tests: fast retries, bounded timeouts, no SIGKILL, named threads."""
    settings = kopf.OperatorSettings()
    settings.process.ultimate_exiting_timeout = None  # never SIGKILL the test process
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1.0]
    settings.networking.connect_timeout = 5
    settings.networking.request_timeout = 30
    settings.watching.connect_timeout = 5
    settings.execution.executor = concurrent.futures.ThreadPoolExecutor(
        thread_name_prefix=f"{name}-sync"
    )
    return settings


def clone_registry(source: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    """A shallow copy: the same handlers in new lists (so that the source stays untouched)."""
    clone = kopf.OperatorRegistry()
    for attr, sub in vars(source).items():
        if isinstance(sub, kopf_registries.GenericRegistry):
            copied = type(sub)()
            copied._handlers = list(sub._handlers)
            setattr(clone, attr, copied)
    return clone


# Operator modules imported by the runner, with the handlers they registered at import time.
_MODULE_REGISTRIES: dict[str, kopf.OperatorRegistry] = {}


def load_registry(target: OperatorTarget) -> kopf.OperatorRegistry:
    """
    The handlers of the operator under test, as a registry (see the module docs).

    A module not imported yet is imported with a fresh registry as kopf's default one,
    so it gets exactly its own module-level handlers (cached for later runs). A module
    imported earlier by other code has put its handlers into kopf's default registry,
    so that one is used.
    """
    if isinstance(target, kopf.OperatorRegistry):
        return target
    if isinstance(target, (str, types.ModuleType)):
        name = target if isinstance(target, str) else target.__name__
        if name in _MODULE_REGISTRIES:
            return _MODULE_REGISTRIES[name]
        if name in sys.modules:
            return kopf.get_default_registry()
        previous = kopf.get_default_registry()
        registry = kopf.OperatorRegistry()
        kopf.set_default_registry(registry)
        try:
            importlib.import_module(name)
        finally:
            kopf.set_default_registry(previous)
        _MODULE_REGISTRIES[name] = registry
        return registry
    if callable(target):
        registry = kopf.OperatorRegistry()
        target(registry)
        return registry
    raise TypeError(f"Cannot make an operator from {target!r}.")


class _OperatorLogCollector(logging.Handler):
    """Keeps kopf's warnings & errors from one operator's threads, for failure messages."""

    def __init__(self, thread_name: str) -> None:
        super().__init__(level=logging.WARNING)
        self.thread_name = thread_name  # the loop's thread; the sync handlers' are "{name}-sync_N"
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        thread = record.threadName or ""
        if thread != self.thread_name and not thread.startswith(f"{self.thread_name}-sync"):
            return
        if record.getMessage() in _EXPECTED_WARNINGS:
            return
        self.records.append(record)

    def lines(self, min_level: int = logging.WARNING) -> list[str]:
        result = []
        for record in list(self.records):
            if record.levelno < min_level:
                continue
            line = f"{record.levelname} [{record.name}] {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                line += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            result.append(line)
        return result


class RunningOperator:
    """One kopf operator running in its own thread against the emulator."""

    def __init__(
        self,
        kube: KubeHarness,
        target: OperatorTarget,
        *,
        name: str = "kopf-operator",
        clusterwide: bool | None = None,
        namespaces: Collection[str] = (),
        settings: SettingsArg = None,
        memo: Any = None,
        allow_errors: bool = False,
        log_level: int = logging.INFO,
    ) -> None:
        if clusterwide is None:
            clusterwide = not namespaces
        if clusterwide and namespaces:
            raise TypeError("An operator is either cluster-wide or namespaced, not both.")
        self.kube = kube
        self.name = name
        self.clusterwide = clusterwide
        self.namespaces = list(namespaces)
        self.allow_errors = allow_errors
        self.log_level = log_level
        self._saved_log_level: int | None = None
        self.memo = memo if memo is not None else kopf.Memo()
        self.registry = clone_registry(load_registry(target))
        self._install_login(self.registry, kube.url)

        if isinstance(settings, kopf.OperatorSettings):
            self.settings = settings
        else:
            self.settings = harness_settings(name)
            if settings is not None:
                settings(self.settings)

        self.ready_flag = threading.Event()
        self.exception: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_flag: asyncio.Event | None = None
        self._loop_ready = threading.Event()
        self._stopping = False
        self._stopped = False
        self._crash_reported = False
        self._logs = _OperatorLogCollector(name)

    @staticmethod
    def _install_login(registry: kopf.OperatorRegistry, url: str) -> None:
        activities = registry._activities
        activities._handlers = [
            handler
            for handler in activities._handlers
            if handler.activity != kopf_causes.Activity.AUTHENTICATION
        ]

        @kopf.on.login(registry=registry, id=LOGIN_HANDLER_ID)
        def login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, default_namespace="default")

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, ready_timeout: float = 15, wait_watching: bool = True) -> RunningOperator:
        # Computed before starting: a handler for an unserved resource fails without an operator.
        expected = self.expected_watches() if wait_watching else None
        for namespace in self.namespaces:
            if not any(char in namespace for char in "*?!,"):
                self.kube.ensure_namespace(namespace)  # kopf serves only existing namespaces

        # As `kopf run` does: kopf's INFO records must exist at all, or kopf cannot post them as
        # k8s Events (posting.loggers=True) -- by default, the root logger drops them (WARNING).
        kopf_logger = logging.getLogger("kopf")
        kopf_logger.addHandler(self._logs)
        self._saved_log_level = kopf_logger.level
        if kopf_logger.getEffectiveLevel() > self.log_level:
            kopf_logger.setLevel(self.log_level)
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

        deadline = time.monotonic() + ready_timeout
        while not self.ready_flag.wait(0.02):
            self.check()
            if time.monotonic() > deadline:
                raise OperatorCrashed(
                    f"The operator {self.name!r} did not become ready in {ready_timeout}s.\n"
                    + self.describe()
                )
        if expected is not None:
            self.wait_for(
                lambda: not (expected - set(self.kube.active_watches())),
                timeout=max(1.0, deadline - time.monotonic()),
                message=f"the operator {self.name!r} to watch {sorted(expected)}",
            )
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by check()/stop(), never lost
            self.exception = e
        finally:
            self._loop_ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_flag = asyncio.Event()
        self._loop_ready.set()
        await kopf.operator(
            registry=self.registry,
            settings=self.settings,
            memo=self.memo,
            standalone=True,
            clusterwide=self.clusterwide,
            namespaces=self.namespaces,
            stop_flag=self._stop_flag,
            ready_flag=self.ready_flag,
        )

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """Fail fast if the operator is not running while it should be."""
        if self._stopping or self._thread is None or self._thread.is_alive():
            return
        self._crash_reported = True  # do not fail the teardown again with the same failure
        details = self.describe()
        if self.exception is not None:
            raise OperatorCrashed(
                f"The operator {self.name!r} has crashed.\n{details}"
            ) from self.exception
        raise OperatorCrashed(f"The operator {self.name!r} has exited unexpectedly.\n{details}")

    def stop(self, timeout: float = 20) -> None:
        """Stop via the stop-flag, wait for the thread; raise the operator's failure, if any."""
        if self._stopped or self._thread is None:
            return
        self._stopping = True
        try:
            self._loop_ready.wait(5)
            loop, flag = self._loop, self._stop_flag
            if loop is not None and flag is not None and self._thread.is_alive():
                with contextlib.suppress(RuntimeError):  # the loop has just closed
                    loop.call_soon_threadsafe(flag.set)
            self._thread.join(timeout)
            if self._thread.is_alive() and loop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._cancel_everything)
                self._thread.join(5)
            if self._thread.is_alive():
                raise OperatorCrashed(f"The operator {self.name!r} did not stop in {timeout}s.")
        finally:
            self._stopped = True
            kopf_logger = logging.getLogger("kopf")
            kopf_logger.removeHandler(self._logs)
            if self._saved_log_level is not None:
                kopf_logger.setLevel(self._saved_log_level)
            executor = self.settings.execution.executor
            if isinstance(executor, concurrent.futures.ThreadPoolExecutor):
                executor.shutdown(wait=False, cancel_futures=True)
        if self._crash_reported:
            return
        if self.exception is not None:
            raise OperatorCrashed(
                f"The operator {self.name!r} has failed.\n{self.describe()}"
            ) from self.exception
        if not self.allow_errors and self.errors:
            raise OperatorLogErrors(
                f"The operator {self.name!r} logged errors (pass allow_errors=True if expected):\n"
                + "\n".join(self.errors)
            )

    @staticmethod
    def _cancel_everything() -> None:
        for task in asyncio.all_tasks():
            task.cancel()

    # --- introspection ---------------------------------------------------------------------------

    @property
    def errors(self) -> list[str]:
        """ERROR+ records that kopf logged for this operator (failed handlers, failed API calls)."""
        return self._logs.lines(logging.ERROR)

    @property
    def warnings(self) -> list[str]:
        """WARNING+ records (minus the expected one about running outside the main thread)."""
        return self._logs.lines(logging.WARNING)

    def describe(self) -> str:
        logs = self.warnings[-20:]
        lines = [
            f"Operator {self.name!r} warnings & errors:",
            *(f"  {line}" for line in logs or ["(none)"]),
        ]
        return "\n".join(lines)

    def expected_watches(self) -> set[tuple[tuple[str, str, str], str | None]]:
        """
        (resource key, namespace) of the watch-streams this operator must open.

        A handler whose resource the emulator does not serve fails here: otherwise kopf
        would wait for that resource to appear, silently and forever.
        """
        resources = {self._as_kopf_resource(spec): spec for spec in self.kube.specs}
        handlers: list[Any] = []
        for sub in (
            self.registry._indexing,
            self.registry._watching,
            self.registry._spawning,
            self.registry._changing,
        ):
            handlers.extend(sub.get_all_handlers())
        expected: set[tuple[tuple[str, str, str], str | None]] = set()
        for handler in handlers:
            if handler.selector is None:
                continue
            selected = handler.selector.select(list(resources))
            if not selected:
                raise AssertionError(
                    f"The handler {handler.id!r} is for {handler.selector}, which the emulator "
                    f"does not serve: add a ResourceSpec via the `kube_resources` fixture, "
                    f"kube.add_resource(), or a CRD object; or pass wait_watching=False."
                )
            for resource in selected:
                spec = resources[resource]
                if self.clusterwide or not spec.namespaced:
                    expected.add((spec.key, None))
                else:
                    expected.update(
                        (spec.key, ns)
                        for ns in self.namespaces
                        if not any(char in ns for char in "*?!,")
                    )
        return expected

    @staticmethod
    def _as_kopf_resource(spec: ResourceSpec) -> kopf.Resource:
        return kopf.Resource(
            group=spec.group,
            version=spec.version,
            plural=spec.plural,
            kind=spec.kind,
            singular=spec.singular_name,
            shortcuts=frozenset(spec.shortnames),
            categories=frozenset(spec.categories),
            subresources=frozenset(spec.subresources),
            namespaced=spec.namespaced,
            preferred=True,
            verbs=frozenset(spec.verbs),
        )

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        interval: float = 0.02,
        message: str | None = None,
    ) -> T:
        """Poll the predicate; fail at once if the operator dies; show its logs on failure."""
        return wait_for(
            predicate,
            timeout,
            interval=interval,
            message=message,
            checks=[self.check],
            context=lambda: f"{self.describe()}\n{self.kube.describe()}",
            retry_on=(AssertionError, LookupError, KubeApiError),
        )


class KopfRunner:
    """The ``kopf_runner`` fixture: starts operators against ``kube`` and stops them at the end."""

    def __init__(self, kube: KubeHarness) -> None:
        self.kube = kube
        self.operators: list[RunningOperator] = []

    def start(
        self,
        target: OperatorTarget,
        *,
        clusterwide: bool | None = None,
        namespaces: Iterable[str] = (),
        settings: SettingsArg = None,
        memo: Any = None,
        ready_timeout: float = 15,
        wait_watching: bool = True,
        allow_errors: bool = False,
        log_level: int = logging.INFO,
    ) -> RunningOperator:
        """
        Start an operator and wait until it is ready and watching; see :class:`RunningOperator`.

        ``target``: a ``kopf.OperatorRegistry``; a callable ``fn(registry)`` registering handlers;
        or a module (path) whose import registers handlers in kopf's default registry.
        ``clusterwide`` defaults to ``not namespaces``. ``settings``: a ready ``OperatorSettings``,
        or a callable tweaking the harness defaults. ``allow_errors``: do not fail at stop if kopf
        logged errors. ``log_level``: the minimum level of kopf's loggers while running.
        """
        operator = RunningOperator(
            self.kube,
            target,
            name=f"kopf-operator-{len(self.operators) + 1}",
            clusterwide=clusterwide,
            namespaces=list(namespaces),
            settings=settings,
            memo=memo,
            allow_errors=allow_errors,
            log_level=log_level,
        )
        self.operators.append(operator)
        return operator.start(ready_timeout=ready_timeout, wait_watching=wait_watching)

    __call__ = start

    def check(self) -> None:
        for operator in self.operators:
            operator.check()

    def describe(self) -> str:
        return "\n".join(operator.describe() for operator in self.operators)

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        interval: float = 0.02,
        message: str | None = None,
        checks: Sequence[Callable[[], None]] = (),
    ) -> T:
        """Poll the predicate with a deadline; fail fast if any operator dies; explain failures."""
        return wait_for(
            predicate,
            timeout,
            interval=interval,
            message=message,
            checks=[self.check, *checks],
            context=lambda: f"{self.describe()}\n{self.kube.describe()}",
            retry_on=(AssertionError, LookupError, KubeApiError),
        )

    def stop_all(self) -> None:
        failures: list[Exception] = []
        for operator in reversed(self.operators):
            try:
                operator.stop()
            except Exception as e:
                failures.append(e)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ExceptionGroup("Several operators failed.", failures)
