"""The Kubernetes API permissions the operator needs, and why: the one source for RBAC.

The Helm chart's Role/ClusterRole rules (``charts/runlog-relay/templates/_helpers.tpl``)
and the README's RBAC section are written from this; tests keep them equal
(``tests/integration/test_helm.py``) and check that every request the real operator makes
against the Kubernetes emulator is covered by these rules and nothing more is granted
(``tests/integration/test_helm_rbac.py``). A new API call in the operator therefore fails
a test until it is declared here, with its reason.

Who calls what:

- kopf: lists/watches RunLogStores and Secrets in the served namespaces (the handlers and
  the Secret index), patches RunLogStores (its progress annotations), lists/watches CRDs
  (to notice the RunLogStore kind appearing) and, when serving named namespaces,
  namespaces (to notice them appearing); with peering, its peering objects.
- :mod:`.kubeapi` for the controller: reads a Secret, writes the sidecar's ConfigMap,
  patches ``runlogstores/status``, posts Events; the peering gate reads the peering object.
- the admission webhook: reads a store (and its Secret) for the pod's namespace, posts an
  Event when it cannot inject; in self-signed mode, patches its CA into the two webhook
  configurations the chart created (only those, by name).

Namespaced rules go into a Role in each served namespace (``--namespace``) or into the
ClusterRole (``--all-namespaces``); cluster rules always go into a ClusterRole.

Pure data, no kopf: the chart tests import it without the ``operator`` extra.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runlog_relay.config.crd import GROUP, PLURAL

__all__ = ["Permissions", "Rule", "required", "rules_manifest"]

PEERING_GROUP = "kopf.dev"


@dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule, with the reason it exists."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str = field(compare=False)
    """Who needs it and what for (not part of the rule: equal rules may differ here)."""
    resource_names: tuple[str, ...] = ()

    def manifest(self) -> dict[str, Any]:
        """The rule as it appears in a Role or ClusterRole."""
        rule: dict[str, Any] = {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }
        if self.resource_names:
            rule["resourceNames"] = list(self.resource_names)
        return rule

    def allows(self, api_group: str, resource: str, verb: str, name: str | None = None) -> bool:
        """Whether this rule grants ``verb`` on ``resource`` (``plural[/subresource]``)."""
        if api_group not in self.api_groups or resource not in self.resources:
            return False
        if verb not in self.verbs:
            return False
        return not self.resource_names or (name is not None and name in self.resource_names)


@dataclass(frozen=True)
class Permissions:
    """What one operator deployment needs."""

    namespaced: tuple[Rule, ...]
    """Granted in every served namespace (a Role each, or the ClusterRole)."""
    cluster: tuple[Rule, ...]
    """Cluster-scoped resources: always a ClusterRole."""

    def all_rules(self) -> tuple[Rule, ...]:
        return self.namespaced + self.cluster


_STORES = Rule(
    (GROUP,),
    (PLURAL,),
    ("get", "list", "watch", "patch"),
    "kopf watches stores and patches its progress annotations; the controller and the"
    " webhook read a store",
)
_STORE_STATUS = Rule(
    (GROUP,),
    (f"{PLURAL}/status",),
    ("patch",),
    "the controller writes status.conditions and observedGeneration",
)
_SECRETS = Rule(
    ("",),
    ("secrets",),
    ("get", "list", "watch"),
    "kopf watches Secrets so a store reacts to its Secret changing; only referenced"
    " Secrets are ever read",
)
_CONFIGMAPS = Rule(
    ("",),
    ("configmaps",),
    ("get", "create", "patch", "delete"),
    "the controller renders each store's sidecar ConfigMap and deletes it with the store",
)
_EVENTS = Rule(
    ("",),
    ("events",),
    ("create",),
    "one Event per change of a store's readiness, and on pods the webhook cannot inject",
)
_NAMESPACED_PEERING = Rule(
    (PEERING_GROUP,),
    ("kopfpeerings",),
    ("get", "list", "watch", "patch"),
    "kopf peering of replicas, one KopfPeering per served namespace",
)
_CRDS = Rule(
    ("apiextensions.k8s.io",),
    ("customresourcedefinitions",),
    ("list", "watch"),
    "kopf notices the RunLogStore CRD being installed or removed",
)
_NAMESPACES = Rule(
    ("",),
    ("namespaces",),
    ("list", "watch"),
    "kopf notices served namespaces appearing (only when serving named namespaces)",
)
_CLUSTER_PEERING = Rule(
    (PEERING_GROUP,),
    ("clusterkopfpeerings",),
    ("get", "list", "watch", "patch"),
    "kopf peering of replicas serving every namespace",
)


def _webhook_configs(name: str) -> Rule:
    return Rule(
        ("admissionregistration.k8s.io",),
        ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"),
        ("get", "patch"),
        "self-signed webhook certificate: the operator patches its CA into the two"
        " configurations the chart created, and only those",
        resource_names=(name,),
    )


def required(
    *,
    clusterwide: bool,
    peering: bool = False,
    webhook_config_name: str | None = None,
) -> Permissions:
    """What the operator needs.

    ``clusterwide``: ``--all-namespaces`` (else ``--namespace`` each); ``peering``:
    ``--peering``; ``webhook_config_name``: ``--webhook-config-name`` (the self-signed
    webhook certificate mode), None when cert-manager provides the certificate or the
    webhook is off.
    """
    namespaced = [_STORES, _STORE_STATUS, _SECRETS, _CONFIGMAPS, _EVENTS]
    cluster = [_CRDS]
    if not clusterwide:
        cluster.append(_NAMESPACES)
    if peering:
        (cluster if clusterwide else namespaced).append(
            _CLUSTER_PEERING if clusterwide else _NAMESPACED_PEERING
        )
    if webhook_config_name:
        cluster.append(_webhook_configs(webhook_config_name))
    return Permissions(tuple(namespaced), tuple(cluster))


def rules_manifest(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    """Rules as they appear in a Role or ClusterRole, in order."""
    return [rule.manifest() for rule in rules]
