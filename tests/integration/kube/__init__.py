"""
A test harness for the real kopf operator against kmock's Kubernetes emulator.

* :mod:`.emulator` -- ``RealisticKubernetesEmulator``: kmock's emulator plus the API
  semantics kopf needs (resourceVersions, generations, status subresource, patches,
  finalizers, garbage collection, lossless watches, pre-seeded discovery).
* :mod:`.harness` -- the emulator served from a thread over HTTP, and a sync client.
* :mod:`.kopf_runner` -- a kopf operator in its own thread/loop, logged into the emulator.
* :mod:`.fixtures` -- the ``kube``, ``kopf_runner`` and ``kube_resources`` pytest fixtures.
* :mod:`.waiting` -- ``wait_for``: polling with a deadline and a clear failure message.
"""

from .emulator import (
    DEFAULT_NAMESPACES,
    DEFAULT_RESOURCES,
    RUNLOGSTORE,
    WEBHOOK_CONFIGS,
    RealisticKubernetesEmulator,
    ResourceSpec,
    resource_spec_from_crd,
)
from .harness import KubeApiError, KubeClient, KubeEmulatorServer, KubeHarness
from .kopf_runner import KopfRunner, OperatorCrashed, OperatorLogErrors, RunningOperator
from .waiting import WaitTimeout, wait_for

__all__ = [
    "DEFAULT_NAMESPACES",
    "DEFAULT_RESOURCES",
    "RUNLOGSTORE",
    "WEBHOOK_CONFIGS",
    "KopfRunner",
    "KubeApiError",
    "KubeClient",
    "KubeEmulatorServer",
    "KubeHarness",
    "OperatorCrashed",
    "OperatorLogErrors",
    "RealisticKubernetesEmulator",
    "ResourceSpec",
    "RunningOperator",
    "WaitTimeout",
    "resource_spec_from_crd",
    "wait_for",
]
