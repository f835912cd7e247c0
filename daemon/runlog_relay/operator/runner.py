"""Assemble and run the operator: kopf registry, controller, API client, metrics.

:func:`build_operator` wires the parts (tests call it with their own login and bucket
check); :func:`operate` runs kopf on them until ``stop_flag``; :func:`run` is the CLI's
blocking entry point, which also serves ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from dataclasses import dataclass, field, replace
from typing import Any, cast

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from runlog_relay.metrics import OperatorMetrics
from runlog_relay.operator.admission import Admission
from runlog_relay.operator.controller import (
    BucketCheck,
    ControllerOptions,
    StoreController,
    check_bucket,
)
from runlog_relay.operator.handlers import HandlerOptions, register_handlers
from runlog_relay.operator.kubeapi import KubeApi, Login, default_login
from runlog_relay.operator.leadership import Gate, PeeringGate, always
from runlog_relay.operator.webhook import InjectionOptions
from runlog_relay.operator.webhook_tls import (
    CaBundleKeeper,
    RelayWebhookServer,
    WebhookOptions,
    build_webhook_server,
)

__all__ = ["Operator", "OperatorOptions", "build_operator", "operate", "run"]

log = logging.getLogger(__name__)

#: kopf peering priorities are plain integers; a wide random range makes two replicas
#: picking the same one (which pauses both) practically impossible.
_RANDOM_PRIORITY_MAX = 2**31 - 1


@dataclass(frozen=True)
class OperatorOptions:
    """Everything ``runlog-relay operator`` takes on its command line."""

    namespaces: tuple[str, ...] = ()
    """Namespaces (or kopf globs like ``team-*``) to serve; empty with
    ``all_namespaces`` False also means all."""
    all_namespaces: bool = False
    """Serve every namespace (needs cluster-wide RBAC)."""
    metrics_host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the pod
    metrics_port: int | None = 9464
    """Prometheus ``/metrics`` port; None serves none (tests), 0 picks a free port."""
    liveness_port: int | None = 8080
    """kopf's liveness endpoint, ``http://0.0.0.0:PORT/healthz``; None disables it."""
    peering: str | None = None
    """kopf peering name for several replicas; None runs standalone."""
    priority: int | None = None
    """Peering priority; None picks a random one (replicas must differ)."""
    controller: ControllerOptions = field(default_factory=ControllerOptions)
    webhook: WebhookOptions | None = None
    """Serve the admission webhooks (pod injection, RunLogStore validation); None: off."""
    injection: InjectionOptions = field(default_factory=InjectionOptions)
    """What the pod webhook injects."""

    @property
    def clusterwide(self) -> bool:
        return self.all_namespaces or not self.namespaces


@dataclass
class Operator:
    """The parts of one operator instance."""

    registry: kopf.OperatorRegistry
    controller: StoreController
    api: KubeApi
    metrics: OperatorMetrics
    prometheus: CollectorRegistry
    handler_options: HandlerOptions
    identity: str
    """This replica's name among kopf peers (the peering gate looks for it)."""
    admission: Admission | None = None
    """The webhooks' logic, when they are served."""
    webhook_server: RelayWebhookServer | None = None
    ca_keeper: CaBundleKeeper | None = None
    """Keeps the webhook configurations' caBundle (self-signed TLS only)."""


def build_operator(
    options: OperatorOptions,
    *,
    login: Login = default_login,
    bucket_check: BucketCheck = check_bucket,
    prometheus: CollectorRegistry | None = None,
    recheck: bool = True,
) -> Operator:
    prometheus = prometheus if prometheus is not None else CollectorRegistry()
    metrics = OperatorMetrics(prometheus)
    api = KubeApi(login)
    controller_options = options.controller
    if controller_options.instance == ControllerOptions().instance:
        # The pod name, so Events say which replica reported them.
        controller_options = replace(controller_options, instance=socket.gethostname())
    controller = StoreController(
        api, metrics, bucket_check=bucket_check, options=controller_options
    )
    priority = options.priority
    if options.peering and priority is None:
        priority = random.randint(1, _RANDOM_PRIORITY_MAX)  # noqa: S311 - not security
    handler_options = HandlerOptions(
        peering=options.peering, priority=priority or 0, recheck=recheck
    )
    identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
    gate: Gate = always
    if options.peering:
        gate = PeeringGate(
            api,
            name=options.peering,
            identity=identity,
            priority=handler_options.priority,
            clusterwide=options.clusterwide,
        )
    admission = webhook_server = ca_keeper = None
    if options.webhook is not None:
        admission = Admission(
            api, metrics, options=options.injection, instance=controller_options.instance
        )
        if options.webhook.self_signed:
            ca_keeper = CaBundleKeeper(
                api, name=options.webhook.config_name, interval=options.webhook.ca_recheck_interval
            )
        webhook_server = build_webhook_server(
            options.webhook, on_ca=ca_keeper.offer if ca_keeper is not None else None
        )
    registry = kopf.OperatorRegistry()
    register_handlers(
        registry,
        controller=controller,
        api=api,
        options=handler_options,
        recheck_gate=gate,
        admission=admission,
        webhook_server=webhook_server,
        ca_keeper=ca_keeper,
    )
    return Operator(
        registry=registry,
        controller=controller,
        api=api,
        metrics=metrics,
        prometheus=prometheus,
        handler_options=handler_options,
        identity=identity,
        admission=admission,
        webhook_server=webhook_server,
        ca_keeper=ca_keeper,
    )


async def operate(
    operator: Operator,
    options: OperatorOptions,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run kopf with the operator's registry until ``stop_flag`` (or a signal)."""
    liveness = (
        f"http://0.0.0.0:{options.liveness_port}/healthz"
        if options.liveness_port is not None
        else None
    )
    await kopf.operator(
        registry=operator.registry,
        clusterwide=options.clusterwide,
        namespaces=() if options.clusterwide else list(options.namespaces),
        standalone=not operator.handler_options.peering,
        peering_name=operator.handler_options.peering,
        priority=operator.handler_options.priority,
        identity=cast(Any, operator.identity),  # kopf's Identity is a NewType of str
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def run(options: OperatorOptions) -> int:
    """Blocking: serve metrics, run the operator until SIGINT/SIGTERM; the exit code."""
    operator = build_operator(options)
    server = None
    if options.metrics_port is not None:
        server, _thread = start_http_server(
            options.metrics_port, addr=options.metrics_host, registry=operator.prometheus
        )
        log.info(
            "operator metrics on http://%s:%d/metrics",
            options.metrics_host,
            server.server_address[1],
        )
    scope = "all namespaces" if options.clusterwide else ", ".join(options.namespaces)
    log.info(
        "runlog-relay operator starting: %s, %s",
        scope,
        f"peering {options.peering!r}" if options.peering else "standalone",
    )
    if options.webhook is not None:
        log.info(
            "admission webhooks on https://%s:%s (/mutate-pods, /validate-runlogstores), %s",
            options.webhook.host,
            options.webhook.port,
            f"certificate from {options.webhook.cert_dir}"
            if options.webhook.cert_dir
            else "self-signed certificate",
        )
    try:
        asyncio.run(operate(operator, options))
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0
