"""
pytest fixtures for testing a real kopf operator against the Kubernetes emulator.

Use them from a test module (or a conftest) with::

    pytest_plugins = ['tests.integration.kube.fixtures']

``kube``: a fresh emulator per test, served over HTTP on 127.0.0.1 (random port),
with a sync client (see :class:`~tests.integration.kube.harness.KubeHarness`).
``kopf_runner``: starts operators against ``kube``; stops them after the test.
``kube_resources``: the kinds a cluster serves before anything is installed (the
RunLogStore kind comes from installing the generated CRD, as in a real cluster); override
it to serve other or extra kinds (``DEFAULT_RESOURCES`` has RunLogStore pre-seeded).
``operator_processes``: starts ``runlog-relay operator`` processes logged into ``kube``;
stops what is still running after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .emulator import DEFAULT_RESOURCES, RUNLOGSTORE, ResourceSpec
from .harness import KubeHarness
from .kopf_runner import KopfRunner
from .processes import OperatorProcess, stop_all


@pytest.fixture()
def kube_resources() -> Sequence[ResourceSpec]:
    """The resource kinds the emulator serves: the built-in ones, without RunLogStore (a
    test installs the CRD). Override to add your own, e.g.::

    @pytest.fixture()
    def kube_resources(kube_resources):
        return [*kube_resources, ResourceSpec('example.com', 'v1', 'widgets', 'Widget')]
    """
    return [spec for spec in DEFAULT_RESOURCES if spec != RUNLOGSTORE]


@pytest.fixture()
def kube(kube_resources: Sequence[ResourceSpec]) -> Iterator[KubeHarness]:
    """A running Kubernetes emulator and a sync client to it; fails the test on emulator bugs."""
    harness = KubeHarness.start(resources=kube_resources)
    try:
        yield harness
        internal_errors = harness.internal_errors()
        assert not internal_errors, "The emulator crashed on requests:\n" + "\n".join(
            internal_errors
        )
    finally:
        harness.stop()


@pytest.fixture()
def kopf_runner(kube: KubeHarness) -> Iterator[KopfRunner]:
    """Start operators with ``kopf_runner.start(registry_or_callable_or_module, ...)``."""
    runner = KopfRunner(kube)
    try:
        yield runner
    finally:
        runner.stop_all()


@pytest.fixture()
def operator_processes(
    kube: KubeHarness, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """``operator_processes(args, name=..., env=...)``: a started operator process."""
    started: list[OperatorProcess] = []

    def start(args: Sequence[str], **kwargs: Any) -> OperatorProcess:
        kwargs.setdefault("name", f"operator-{len(started) + 1}")
        process = OperatorProcess(kube, args, tmp_path, **kwargs)
        started.append(process)
        return process

    try:
        yield start
    finally:
        stop_all(started)
