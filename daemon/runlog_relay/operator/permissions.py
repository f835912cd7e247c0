"""The Kubernetes API permissions the operator needs, and why: the one source for RBAC.

Every rule the operator may need is in :data:`RULES`, with its scope, the deployment
features it depends on (:data:`FLAGS`) and the reason it exists. ``make manifests``
(``hack/render_manifests.py``) writes them to the chart
(``charts/runlog-relay/files/rbac-rules.yaml``), whose RBAC templates keep the rules
whose flags hold for the values at hand, and to ``docs/rbac.md``. Tests keep all of it
equal: the rendered chart grants exactly :func:`required` for its values
(``tests/integration/test_helm.py``), and every request the real operator makes against
the Kubernetes emulator is covered by those rules, each of which it uses
(``tests/integration/test_helm_rbac.py``). A new API call in the operator therefore fails
a test until it is declared here, with its reason.

Scopes:

- ``served``: in every namespace the operator serves (a Role in each with
  ``--namespace``; in the ClusterRole with ``--all-namespaces``). RBAC cannot say "only
  the Secrets a store references" or "only where stores exist": the operator reads a
  Secret only by the name a store gives, never lists or watches one, and writes only the
  ``runlog-relay-<store>`` ConfigMap a store owns (refusing one it does not own). For a
  hard boundary, serve named namespaces.
- ``own``: the operator's own namespace (a Role there): the webhook certificate Secret.
- ``cluster``: cluster-scoped resources (always the ClusterRole).

A rule's ``resource_names`` may hold ``{placeholders}`` that :func:`required` fills in
(and the chart renders): the names of objects the chart created.

Pure data, no kopf: the chart tests import it without the ``operator`` extra.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runlog_relay.config.crd import GROUP, PLURAL

__all__ = [
    "FLAGS",
    "PLACEHOLDERS",
    "RULES",
    "Permissions",
    "Rule",
    "Scope",
    "flags_for",
    "required",
    "rules_manifest",
]

PEERING_GROUP = "kopf.dev"


class Scope(enum.StrEnum):
    SERVED = "served"
    OWN = "own"
    CLUSTER = "cluster"


#: The deployment features a rule may depend on, as the chart computes them from values.
FLAGS: dict[str, str] = {
    "clusterwide": "serves every namespace (`--all-namespaces`, chart `watchNamespaces: []`)",
    "namespaced": "serves named namespaces (`--namespace`, chart `watchNamespaces`)",
    "peering": "several replicas through kopf peering (`--peering`, chart `peering.enabled`)",
    "webhook": "serves the admission webhooks (chart `webhook.enabled`)",
    "selfSignedWebhook": "keeps its own webhook certificate (no cert-manager)",
}

#: The names in ``resource_names``, as :func:`required` takes them.
PLACEHOLDERS: dict[str, str] = {
    "webhook_config_name": "the webhook configurations' name (`--webhook-config-name`)",
    "webhook_cert_secret": "the Secret of the shared webhook certificate (`--webhook-cert-secret`)",
}


@dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule, where and when it applies, and the reason it exists."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str = field(compare=False)
    """Who needs it and what for (not part of the rule: equal rules may differ here)."""
    scope: Scope = field(default=Scope.SERVED, compare=False)
    when: tuple[str, ...] = field(default=(), compare=False)
    """Flags (of :data:`FLAGS`) that must all hold for the rule to be granted."""
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


RULES: tuple[Rule, ...] = (
    Rule(
        (GROUP,),
        (PLURAL,),
        ("get", "list", "watch", "patch"),
        "kopf lists and watches stores (in pages) and patches its progress annotations"
        " on them; the recheck and the webhook read a store",
    ),
    Rule(
        (GROUP,),
        (f"{PLURAL}/status",),
        ("patch",),
        "the controller writes status.conditions and observedGeneration",
    ),
    Rule(
        ("",),
        ("secrets",),
        ("get",),
        "a store's credentials and CA: each read by the name the store gives, when it is"
        " reconciled or rechecked and when the webhooks check it; Secrets are never listed"
        " or watched",
    ),
    Rule(
        ("",),
        ("configmaps",),
        ("get", "create", "patch"),
        "the sidecar's config, `runlog-relay-<store>`, owned by its store (the garbage"
        " collector deletes it with the store); one the store does not own is left alone",
    ),
    Rule(
        ("",),
        ("events",),
        ("create",),
        "one Event per change of a store's readiness, and on pods the webhook cannot inject",
    ),
    Rule(
        ("",),
        ("secrets",),
        ("get", "update"),
        "the webhook's CA and certificate, shared by the replicas: all read it, the active"
        " one renews it (compare-and-swap); the chart creates it empty, so no right to"
        " create Secrets is needed",
        scope=Scope.OWN,
        when=("selfSignedWebhook",),
        resource_names=("{webhook_cert_secret}",),
    ),
    Rule(
        (PEERING_GROUP,),
        ("kopfpeerings",),
        ("get", "list", "watch", "patch"),
        "kopf peering of replicas serving named namespaces: one KopfPeering in each",
        when=("peering", "namespaced"),
    ),
    Rule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf notices the RunLogStore CRD being installed or removed",
        scope=Scope.CLUSTER,
    ),
    Rule(
        ("",),
        ("namespaces",),
        ("list", "watch"),
        "kopf notices served namespaces appearing",
        scope=Scope.CLUSTER,
        when=("namespaced",),
    ),
    Rule(
        (PEERING_GROUP,),
        ("clusterkopfpeerings",),
        ("get", "list", "watch", "patch"),
        "kopf peering of replicas serving every namespace: one ClusterKopfPeering",
        scope=Scope.CLUSTER,
        when=("peering", "clusterwide"),
    ),
    Rule(
        ("",),
        ("namespaces",),
        ("get",),
        "the pod webhook reads a namespace's runlog-relay.dev/store label, its default store,"
        " for pods that do not name one themselves",
        scope=Scope.CLUSTER,
        when=("webhook",),
    ),
    Rule(
        ("",),
        ("nodes",),
        ("list",),
        "native_sidecar auto: the webhook injects native sidecars only where every node's"
        " kubelet runs them (1.29+); nodeInfo.kubeletVersion, in pages, every few minutes",
        scope=Scope.CLUSTER,
        when=("webhook",),
    ),
    Rule(
        ("authorization.k8s.io",),
        ("subjectaccessreviews",),
        ("create",),
        "the validating webhook asks whether the author of a RunLogStore may read the"
        " Secrets it names (a store sends their keys to its endpoint)",
        scope=Scope.CLUSTER,
        when=("webhook",),
    ),
    Rule(
        ("admissionregistration.k8s.io",),
        ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"),
        ("get", "patch"),
        "the webhook certificate's CA goes into the caBundle of the two configurations the"
        " chart created, and only those",
        scope=Scope.CLUSTER,
        when=("selfSignedWebhook",),
        resource_names=("{webhook_config_name}",),
    ),
)


@dataclass(frozen=True)
class Permissions:
    """What one operator deployment needs, by scope."""

    served: tuple[Rule, ...]
    own: tuple[Rule, ...]
    cluster: tuple[Rule, ...]

    def all_rules(self) -> tuple[Rule, ...]:
        return self.served + self.own + self.cluster


def flags_for(
    *, clusterwide: bool, peering: bool = False, webhook: bool = True, self_signed: bool = True
) -> set[str]:
    """The :data:`FLAGS` that hold for a deployment."""
    flags = {"clusterwide" if clusterwide else "namespaced"}
    if peering:
        flags.add("peering")
    if webhook:
        flags.add("webhook")
        if self_signed:
            flags.add("selfSignedWebhook")
    return flags


def required(flags: Iterable[str], names: Mapping[str, str] | None = None) -> Permissions:
    """The rules for a deployment with ``flags`` (see :func:`flags_for`), placeholders
    filled from ``names`` (each of :data:`PLACEHOLDERS` that a granted rule uses)."""
    active = set(flags)
    unknown = active - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown RBAC flags: {sorted(unknown)}")
    chosen: dict[Scope, list[Rule]] = {scope: [] for scope in Scope}
    for rule in RULES:
        if not set(rule.when) <= active:
            continue
        if rule.resource_names:
            rule = Rule(
                rule.api_groups,
                rule.resources,
                rule.verbs,
                rule.why,
                rule.scope,
                rule.when,
                tuple(name.format_map(dict(names or {})) for name in rule.resource_names),
            )
        chosen[rule.scope].append(rule)
    return Permissions(
        tuple(chosen[Scope.SERVED]), tuple(chosen[Scope.OWN]), tuple(chosen[Scope.CLUSTER])
    )


def rules_manifest(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    """Rules as they appear in a Role or ClusterRole, in order."""
    return [rule.manifest() for rule in rules]
