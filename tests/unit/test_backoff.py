"""backoff: the one retry rule of the project."""

from __future__ import annotations

import random

import pytest

from runlog_relay.backoff import backoff_delay


def test_without_jitter_it_doubles_from_base_up_to_the_cap() -> None:
    assert [backoff_delay(n, base=1, cap=10, jitter=False) for n in range(6)] == [
        1,
        2,
        4,
        8,
        10,
        10,
    ]
    assert backoff_delay(10_000, base=5, cap=300, jitter=False) == 300
    assert backoff_delay(-3, base=0.2, cap=10, jitter=False) == 0.2


@pytest.mark.parametrize("retry", [0, 1, 3, 7, 40])
def test_jitter_stays_in_the_upper_half_of_the_ceiling(retry: int) -> None:
    rng = random.Random(retry)
    ceiling = min(10.0, 0.2 * 2**retry)
    delays = [backoff_delay(retry, base=0.2, cap=10, rng=rng) for _ in range(200)]
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 100  # spread out, not one value
