"""A misspelt RUNLOG_RELAY_OPERATOR_* variable is named, not ignored in silence."""

from __future__ import annotations

from runlog_relay.operator.settings import ENV_PREFIX, env_name, iter_fields, unknown_variables


def test_every_option_variable_is_known_and_a_misspelt_one_is_named() -> None:
    known = {env_name(path): "1" for path, _ in iter_fields()}
    known[f"{ENV_PREFIX}INJECTION"] = "{}"  # a whole group as JSON
    assert unknown_variables(known) == []
    assert unknown_variables({**known, f"{ENV_PREFIX}RECONCILE__RECHECK_INTERVL": "5"}) == [
        f"{ENV_PREFIX}RECONCILE__RECHECK_INTERVL is not an operator setting (did you mean"
        f" {ENV_PREFIX}RECONCILE__RECHECK_INTERVAL?); it is ignored"
    ]
    assert unknown_variables({"RUNLOG_RELAY_ENDPOINT": "x", "HOME": "/tmp"}) == []
