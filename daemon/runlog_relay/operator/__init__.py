"""The Kubernetes operator: RunLogStore status, sidecar ConfigMaps, Secret tracking.

Built on kopf, which is imported only inside this package and only by the modules that
need it (:mod:`.handlers`, :mod:`.runner`, :mod:`.kubeapi`), so ``runlog-relay crd``
works without the ``operator`` extra. Layers, one way::

    command ─▶ runner ─▶ handlers (kopf decorators, thin)
                           ├─▶ controller (one reconcile: I/O in order, one lock per store)
                           │     ├─▶ reconcile (pure: conditions, status, events, ConfigMap)
                           │     ├─▶ kubeapi (a few REST calls over kopf's credentials)
                           │     └─▶ objectstore (bucket check, in a thread)
                           └─▶ admission (the webhooks' I/O: store lookup, Events)
                                 ├─▶ webhook (pure: the pod patch, the store checks)
                                 └─▶ webhook_tls (certificates, caBundle upkeep)

This ``__init__`` imports nothing on purpose.
"""

__all__: list[str] = []
