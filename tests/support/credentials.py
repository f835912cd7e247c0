"""Reading the static key pair out of settings, for assertions."""

from __future__ import annotations

from runlog_relay.config.credentials import StaticKeys
from runlog_relay.config.settings import SidecarSettings


def key_pair(settings: SidecarSettings) -> tuple[str, str]:
    """The access key pair the settings resolve to (they must resolve to static keys)."""
    plan = settings.credentials()
    assert isinstance(plan, StaticKeys), plan
    return plan.access_key, plan.secret_key
