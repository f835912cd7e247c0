"""Kubernetes RBAC authorization over the emulator's own RBAC objects.

kmock's emulator does not authorize anything, so it cannot answer a SubjectAccessReview.
This module does, the way the API server's RBAC authorizer does, from the Roles,
ClusterRoles, RoleBindings and ClusterRoleBindings stored in the emulator -- an explicit
RBAC model a test writes with ordinary objects, never a canned yes:

- a user's subjects: ``User <name>``, each ``Group`` of the review, and for a
  ``system:serviceaccount:<ns>:<name>`` user the ``ServiceAccount`` subject (its groups
  ``system:serviceaccounts`` and ``system:serviceaccounts:<ns>`` come with the review,
  as the API server sends them);
- a namespaced request is allowed by a RoleBinding in its namespace (to a Role there or a
  ClusterRole) or by a ClusterRoleBinding; a cluster-scoped one by a ClusterRoleBinding;
- a rule matches on ``apiGroups``, ``resources`` (``plural`` or ``plural/subresource``,
  ``*`` and ``*/sub``), ``verbs`` and ``resourceNames`` (``*`` anywhere but names);
- ``system:masters`` may do anything, as on a real cluster.

Aggregated ClusterRoles and non-resource URLs are not modelled: nothing here uses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["authorize", "subjects_of"]

SUPERUSER_GROUP = "system:masters"


def subjects_of(user: str, groups: Iterable[str]) -> set[tuple[str, str, str]]:
    """``(kind, namespace, name)`` of every subject a binding may name for this user."""
    subjects = {("User", "", user)} | {("Group", "", group) for group in groups}
    parts = user.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        subjects.add(("ServiceAccount", parts[2], parts[3]))
    return subjects


def _bound(binding: Mapping[str, Any], subjects: set[tuple[str, str, str]]) -> bool:
    for subject in binding.get("subjects") or []:
        kind = subject.get("kind")
        namespace = subject.get("namespace", "") if kind == "ServiceAccount" else ""
        if (kind, namespace, subject.get("name")) in subjects:
            return True
    return False


def _matches(rule: Mapping[str, Any], attributes: Mapping[str, Any]) -> bool:
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attributes.get("group", "") not in groups:
        return False
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attributes.get("verb") not in verbs:
        return False
    resource = attributes.get("resource", "")
    if attributes.get("subresource"):
        resource = f"{resource}/{attributes['subresource']}"
    resources = rule.get("resources") or []
    wildcard_sub = "/" in resource and f"*/{resource.split('/', 1)[1]}" in resources
    if "*" not in resources and resource not in resources and not wildcard_sub:
        return False
    names = rule.get("resourceNames") or []
    return not names or attributes.get("name") in names


def authorize(objects: Iterable[Mapping[str, Any]], spec: Mapping[str, Any]) -> tuple[bool, str]:
    """``(allowed, reason)`` for a SubjectAccessReview ``spec`` over ``objects`` (every
    live object of the emulator; only the RBAC kinds are looked at)."""
    user = str(spec.get("user") or "")
    groups = [str(g) for g in spec.get("groups") or []]
    attributes = spec.get("resourceAttributes") or {}
    if SUPERUSER_GROUP in groups:
        return True, f"{user} is in {SUPERUSER_GROUP}"
    if not attributes:
        return False, "only resource attributes are modelled"
    subjects = subjects_of(user, groups)
    namespace = attributes.get("namespace") or ""
    roles: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    bindings: list[tuple[str, Mapping[str, Any]]] = []
    for obj in objects:
        kind, meta = obj.get("kind"), obj.get("metadata") or {}
        if kind in ("Role", "ClusterRole"):
            roles[(kind, meta.get("namespace", "") if kind == "Role" else "", meta["name"])] = obj
        elif kind in ("RoleBinding", "ClusterRoleBinding"):
            bindings.append((str(kind), obj))
    for kind, binding in bindings:
        meta = binding.get("metadata") or {}
        if kind == "RoleBinding" and (not namespace or meta.get("namespace") != namespace):
            continue
        if not _bound(binding, subjects):
            continue
        ref = binding.get("roleRef") or {}
        role_namespace = meta.get("namespace", "") if ref.get("kind") == "Role" else ""
        role = roles.get((str(ref.get("kind")), role_namespace, str(ref.get("name"))))
        if role is None:
            continue
        for rule in role.get("rules") or []:
            if _matches(rule, attributes):
                where = f"{kind} {meta.get('name')}"
                return True, f"RBAC: allowed by {where} of {ref.get('kind')} {ref.get('name')}"
    return False, ""
