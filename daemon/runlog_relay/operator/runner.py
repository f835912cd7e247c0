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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from runlog_relay.config.credentials import describe as describe_credentials
from runlog_relay.config.settings import ambient_identity
from runlog_relay.errors import ConfigError
from runlog_relay.metrics import OperatorMetrics
from runlog_relay.operator.admission import Admission
from runlog_relay.operator.cluster import ClusterVersions
from runlog_relay.operator.controller import BucketCheck, StoreController, check_bucket
from runlog_relay.operator.handlers import HandlerOptions, register_handlers
from runlog_relay.operator.kubeapi import KubeApi, Login, default_login
from runlog_relay.operator.leadership import Leadership
from runlog_relay.operator.policy import EndpointPolicy
from runlog_relay.operator.settings import OperatorSettings
from runlog_relay.operator.webhook_tls import (
    CaBundleKeeper,
    CertificateFiles,
    CertPolicy,
    RelayWebhookServer,
    SharedCertificate,
    build_webhook_server,
    service_names,
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
    """This replica's name among kopf peers (the peering objects' status keys)."""
    leadership: Leadership
    admission: Admission | None = None
    """The webhooks' logic, when they are served."""
    webhook_server: RelayWebhookServer | None = None
    certificates: SharedCertificate | CertificateFiles | None = None
    """Where the webhook server's certificate comes from."""
    ca_keeper: CaBundleKeeper | None = None
    """Keeps the webhook configurations' caBundle (shared self-signed TLS only)."""


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
    on_change: list[Callable[[bool], None]] = [lambda leading: metrics.leading.set(leading)]

    def leadership_changed(leading: bool) -> None:
        for callback in on_change:
            callback(leading)

    leadership = Leadership(
        api,
        name=peering,
        identity=identity,
        priority=handler_options.priority,
        namespaces=None if options.clusterwide else options.namespaces,
        interval=options.peering.leadership_check_interval,
        on_change=leadership_changed,
    )
    metrics.leading.set(1 if leadership.leading else 0)
    try:  # the operator pod's own AWS variables (IRSA / Pod Identity on its ServiceAccount)
        own_identity = ambient_identity()
    except ConfigError as exc:
        raise SystemExit(f"runlog-relay operator: {exc}") from None
    log.info(
        "bucket checks of service-account stores: %s",
        describe_credentials(own_identity)
        if own_identity
        else "left to the sidecars (the operator has no AWS identity of its own)",
    )
    policy = EndpointPolicy.from_patterns(options.allowed_endpoints)
    controller = StoreController(
        api,
        metrics,
        bucket_check=bucket_check,
        options=options.reconcile,
        instance=options.instance,
        gate=leadership.gate,
        identity=own_identity,
        policy=policy,
    )
    background: list[Callable[[], Coroutine[Any, Any, None]]] = [leadership.run]
    admission = webhook_server = ca_keeper = None
    certificates: SharedCertificate | CertificateFiles | None = None
    webhook = options.webhook
    if webhook.port:
        cluster = ClusterVersions(api, interval=options.injection.cluster_check_interval)
        background.append(cluster.run)
        admission = Admission(
            api,
            metrics,
            options=options.injection,
            instance=options.instance,
            lookup_timeout=webhook.lookup_budget,
            fresh=leadership.fresh,
            policy=policy,
            cluster=cluster,
        )
        namespace = webhook.service_namespace or "runlog-relay"
        if webhook.self_signed:
            keeper = ca_keeper = CaBundleKeeper(
                api,
                name=webhook.config_name,
                interval=webhook.cert_check_interval,
                leadership=leadership,
            )
            shared = certificates = SharedCertificate(
                api,
                namespace=namespace,
                name=webhook.cert_secret,
                policy=CertPolicy.from_settings(
                    webhook, service_names(webhook.service_name, namespace)
                ),
                leadership=leadership,
                interval=webhook.cert_check_interval,
            )
            shared.subscribe(lambda material: keeper.offer(material.ca_bundle))
            on_change.append(lambda leading: keeper.wake() if leading else None)
            background.append(keeper.run)
        else:
            assert webhook.cert_dir is not None  # not self-signed
            certificates = CertificateFiles(webhook.cert_dir, interval=webhook.cert_check_interval)
        background.append(certificates.run)
        webhook_server = build_webhook_server(
            webhook,
            certificates,
            on_material=lambda m: metrics.webhook_certificate_expiry.set(m.not_after.timestamp()),
            ready=[cluster.looked],
        )
    if recheck:
        background.append(controller.recheck_forever)
    registry = kopf.OperatorRegistry()
    register_handlers(
        registry,
        controller=controller,
        api=api,
        options=handler_options,
        background=background,
        admission=admission,
        webhook_server=webhook_server,
    )
    return Operator(
        registry=registry,
        controller=controller,
        api=api,
        metrics=metrics,
        prometheus=prometheus,
        handler_options=handler_options,
        identity=identity,
        leadership=leadership,
        admission=admission,
        webhook_server=webhook_server,
        certificates=certificates,
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
