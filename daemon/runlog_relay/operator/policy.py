"""What a RunLogStore may point the operator at: the endpoint allow-list, and what makes a
spec change a question for the SubjectAccessReview.

A store makes the operator (its bucket check) and every injected sidecar send the keys of
a Secret to ``spec.endpoint`` -- SigV4 sends the access key id in clear -- and makes the
operator connect there. So whoever may create a store could make the operator probe an
internal address, or carry a Secret of the namespace to a server of their choice. Two
guards, both pure here and applied by :mod:`.admission` (denial), :mod:`.controller`
(the store is not connected to) and :mod:`.webhook` (no sidecar is injected):

- :class:`EndpointPolicy`: with ``--allowed-endpoint`` patterns, only matching endpoints;
- :func:`credential_exposure`: the part of a spec that decides which Secret keys go where;
  a CREATE, or an UPDATE that changes it, is checked with a SubjectAccessReview: the
  requester must be allowed to ``get`` each referenced Secret themselves.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["EndpointPattern", "EndpointPolicy", "credential_exposure"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PATTERN = re.compile(
    r"^(?P<scheme>https?)://(?P<host>[A-Za-z0-9*._-]+|\[[0-9a-fA-F:.]+\])(:(?P<port>\*|\d{1,5}))?/?$"
)


@dataclass(frozen=True)
class EndpointPattern:
    """``scheme://host[:port]``: ``*.example.com`` matches any name under example.com;
    no port means the scheme's default port only, ``:*`` any port."""

    scheme: str
    host: str
    port: int | None
    """None: any port."""
    text: str

    @classmethod
    def parse(cls, text: str) -> EndpointPattern:
        match = _PATTERN.match(text.strip())
        if not match:
            raise ValueError(
                f"allowed endpoint {text!r} is not scheme://host[:port] (http or https; a"
                " host may start with '*.'; port '*' allows any)"
            )
        host = match["host"].lower()
        if "*" in host and not (host.startswith("*.") and "*" not in host[2:]):
            raise ValueError(f"allowed endpoint {text!r}: '*' only as the first label, '*.'")
        port_text = match["port"]
        if port_text == "*":
            port = None
        elif port_text:
            port = int(port_text)
            if not 0 < port < 65536:
                raise ValueError(f"allowed endpoint {text!r} has an invalid port")
        else:
            port = _DEFAULT_PORTS[match["scheme"]]
        return cls(match["scheme"], host, port, text.strip())

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme or (self.port is not None and port != self.port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and fnmatch.fnmatchcase(host, self.host)
        return host == self.host


@dataclass(frozen=True)
class EndpointPolicy:
    """The allow-list; empty allows every endpoint (the default, as before)."""

    patterns: tuple[EndpointPattern, ...] = ()

    @classmethod
    def from_patterns(cls, patterns: Iterable[str]) -> EndpointPolicy:
        return cls(tuple(EndpointPattern.parse(p) for p in patterns))

    def denial(self, endpoint: str) -> str | None:
        """Why ``endpoint`` is not allowed, or None."""
        if not self.patterns:
            return None
        parts = urlsplit(endpoint)
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError:
            return f"endpoint {endpoint!r} has an invalid port"
        host = (parts.hostname or "").lower()
        if any(p.matches(parts.scheme, host, port) for p in self.patterns):
            return None
        allowed = ", ".join(p.text for p in self.patterns)
        return (
            f"endpoint {endpoint} is not in the operator's allow-list ({allowed});"
            " ask the cluster's administrator, or use an allowed endpoint"
        )


def credential_exposure(spec: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """The fields that decide which Secret keys are sent where, and how safely: the
    endpoint, the TLS options, and every Secret reference (read leniently, like the
    webhooks read an invalid spec)."""
    spec = spec if isinstance(spec, Mapping) else {}
    return (
        spec.get("endpoint"),
        _frozen(spec.get("tls")),
        _frozen(spec.get("credentialsSecretRef")),
        _frozen(spec.get("credentials")),
        _frozen(spec.get("sse")),  # an SSE-C key is a Secret sent with every request
    )


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
