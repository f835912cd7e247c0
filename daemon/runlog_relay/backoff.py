"""The one backoff rule: exponential, capped, with jitter where many clients retry.

Every retry in the project waits ``backoff_delay(n)`` before its ``n``-th retry (0 for
the first): ``base * 2**n`` capped at ``cap``. With ``jitter`` (the default) the wait is
drawn uniformly from the upper half of that ceiling ("equal jitter", AWS architecture
blog): retries of many keys or many sidecars spread out, yet the wait never collapses to
zero. Used by the sidecar's uploads, listings and torn-file re-reads, the tools' short
retries and the operator's reconcile retries.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]

_MAX_DOUBLINGS = 32  # 2**32 times any base is beyond every cap


def backoff_delay(
    retry: int, *, base: float, cap: float, jitter: bool = True, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``retry`` (0-based)."""
    ceiling = float(min(cap, base * (2 ** min(max(retry, 0), _MAX_DOUBLINGS))))
    if not jitter:
        return ceiling
    return (rng or random).uniform(ceiling / 2, ceiling)
