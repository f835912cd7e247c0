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
from dataclasses import dataclass
from typing import Any, cast

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from runlog_relay.metrics import OperatorMetrics
from runlog_relay.operator.admission import Admission
from runlog_relay.operator.controller import BucketCheck, StoreController, check_bucket
from runlog_relay.operator.handlers import HandlerOptions, register_handlers
from runlog_relay.operator.kubeapi import KubeApi, Login, default_login
from runlog_relay.operator.leadership import Gate, PeeringGate, always
from runlog_relay.operator.settings import OperatorSettings
from runlog_relay.operator.webhook_tls import (
    CaBundleKeeper,
    RelayWebhookServer,
    build_webhook_server,
)

__all__ = ["Operator", "build_operator", "operate", "run"]

log = logging.getLogger(__name__)

#: kopf peering priorities are plain integers, and kopf freezes every replica when two
#: live ones have the same. The configured priority is the class (high bits); a random
#: tie-breaker below it tells apart replicas of one pod template (one Deployment, same
#: arguments). 2**31 values keep a collision out of reach and the sum a safe JSON number.
_TIEBREAK_RANGE = 2**31


def effective_priority(priority: int) -> int:
    """kopf's priority for a replica of priority class ``priority``."""
    return priority * _TIEBREAK_RANGE + random.randrange(1, _TIEBREAK_RANGE)  # noqa: S311


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
    options: OperatorSettings,
    *,
    login: Login = default_login,
    bucket_check: BucketCheck = check_bucket,
    prometheus: CollectorRegistry | None = None,
    recheck: bool = True,
) -> Operator:
    prometheus = prometheus if prometheus is not None else CollectorRegistry()
    metrics = OperatorMetrics(prometheus)
    api = KubeApi(login)
    peering = options.peering.name
    handler_options = HandlerOptions(
        peering=peering,
        priority=effective_priority(options.peering.priority) if peering else 0,
        lifetime=options.peering.lifetime,
        recheck=recheck,
        chunk_size=options.list_chunk_size,
    )
    identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
    gate: Gate = always
    if peering:
        gate = PeeringGate(
            api,
            name=peering,
            identity=identity,
            priority=handler_options.priority,
            clusterwide=options.clusterwide,
        )
    controller = StoreController(
        api,
        metrics,
        bucket_check=bucket_check,
        options=options.reconcile,
        instance=options.instance,
        gate=gate,
    )
    admission = webhook_server = ca_keeper = None
    if options.webhook.port:
        admission = Admission(api, metrics, options=options.injection, instance=options.instance)
        if options.webhook.self_signed:
            ca_keeper = CaBundleKeeper(
                api, name=options.webhook.config_name, interval=options.webhook.cert_check_interval
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
    options: OperatorSettings,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run kopf with the operator's registry until ``stop_flag`` (or a signal)."""
    liveness = f"http://0.0.0.0:{options.liveness_port}/healthz" if options.liveness_port else None
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


def run(options: OperatorSettings) -> int:
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
        f"peering {options.peering.name!r}" if options.peering.name else "standalone",
    )
    if options.webhook.port:
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
