"""``runlog-relay operator`` options, kopf settings and the registry it builds."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import kopf
import pytest
from prometheus_client import CollectorRegistry

from runlog_relay import cli
from runlog_relay.config.crd import GROUP
from runlog_relay.operator.command import FLAGS, settings_from_args
from runlog_relay.operator.handlers import HandlerOptions, configure_settings
from runlog_relay.operator.runner import build_operator
from runlog_relay.operator.settings import OperatorSettings, env_name, iter_fields

NO_WEBHOOK = {"webhook": {"port": 0}}


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser(only="operator").parse_args(["operator", *argv])


def test_defaults() -> None:
    options = settings_from_args(parse())
    assert options.clusterwide and options.namespaces == []
    assert (options.metrics_port, options.liveness_port) == (9464, 8080)
    assert options.peering.name is None
    assert options.reconcile.recheck_interval == 300


def test_every_option_has_a_flag_an_environment_variable_and_help() -> None:
    assert {path for path, _ in iter_fields()} == set(FLAGS)
    parser = cli.build_parser(only="operator")
    (operator,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {
        action.dest: action.help or ""
        for action in operator.choices["operator"]._actions
        if action.dest.startswith("setting:")
    }
    for path, field in iter_fields():
        assert field.description, f"{path} has no docstring"
        assert env_name(path) in helps["setting:" + ".".join(path)]


def test_environment_variables_set_every_kind_of_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_OPERATOR_NAMESPACES", "team-a, team-b")
    monkeypatch.setenv("RUNLOG_RELAY_OPERATOR_RECONCILE__RECHECK_INTERVAL", "30")
    monkeypatch.setenv("RUNLOG_RELAY_OPERATOR_PEERING__NAME", "relay")
    monkeypatch.setenv("RUNLOG_RELAY_OPERATOR_INJECTION__SCRAPE_ANNOTATIONS", "true")
    monkeypatch.setenv("RUNLOG_RELAY_OPERATOR_INJECTION__RESOURCES", '{"requests": {"cpu": "5m"}}')
    options = settings_from_args(parse("--recheck-interval", "40"))
    assert options.namespaces == ["team-a", "team-b"] and not options.clusterwide
    assert options.reconcile.recheck_interval == 40  # the flag wins over the variable
    assert options.peering.name == "relay"
    assert options.injection.scrape_annotations is True
    assert options.injection.resources == {"requests": {"cpu": "5m"}}


def test_peering_with_namespace_patterns_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="peering needs the served namespaces by name"):
        settings_from_args(parse("-n", "team-*", "--peering", "relay"))


def test_a_bad_environment_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLOG_RELAY_OPERATOR_WEBHOOK__PORT", "99999")
    with pytest.raises(ValueError, match="RUNLOG_RELAY_OPERATOR_WEBHOOK__PORT"):
        settings_from_args(parse())


def test_namespaces_ports_peering_and_tuning() -> None:
    options = settings_from_args(
        parse(
            "-n",
            "team-a",
            "--namespace",
            "team-b",
            "--metrics-port",
            "0",
            "--liveness-port",
            "0",
            "--peering",
            "runlog-relay",
            "--priority",
            "7",
            "--recheck-interval",
            "30",
            "--bucket-timeout",
            "3",
            "--log-format",
            "json",
        )
    )
    assert options.namespaces == ["team-a", "team-b"] and not options.clusterwide
    assert options.metrics_port == 0 and options.liveness_port == 0
    assert (options.peering.name, options.peering.priority) == ("runlog-relay", 7)
    assert options.reconcile.recheck_interval == 30
    assert options.reconcile.bucket_timeout == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "a", "--all-namespaces"],
        ["--metrics-port", "70000"],
        ["--recheck-interval", "0"],
        ["--log-format", "xml"],
    ],
)
def test_bad_options_are_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(*argv)
    assert caught.value.code == 2


def test_standalone_settings() -> None:
    settings = kopf.OperatorSettings()
    configure_settings(settings, HandlerOptions())
    assert settings.peering.standalone is True
    assert settings.posting.enabled is False  # the controller posts its own Events
    assert settings.persistence.finalizer == f"{GROUP}/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == GROUP


def test_peering_settings() -> None:
    settings = kopf.OperatorSettings()
    configure_settings(settings, HandlerOptions(peering="relay", priority=5))
    assert settings.peering.standalone is False and settings.peering.mandatory is True
    assert (settings.peering.name, settings.peering.priority) == ("relay", 5)


def test_replicas_with_the_same_arguments_get_distinct_priorities() -> None:
    def priority(cls: int) -> int:
        settings = OperatorSettings(peering={"name": "relay", "priority": cls}, **NO_WEBHOOK)
        return build_operator(settings, prometheus=CollectorRegistry()).handler_options.priority

    same = {priority(100) for _ in range(5)}
    assert len(same) == 5  # one pod template, five different kopf priorities
    # The configured priority still ranks: every class-101 replica outranks class 100.
    assert min(priority(101) for _ in range(5)) > max(same)
    assert max(priority(-1) for _ in range(5)) < min(priority(0) for _ in range(5))


def test_registry_has_the_handlers_and_no_finalizer_needing_ones() -> None:
    operator = build_operator(OperatorSettings(**NO_WEBHOOK), prometheus=CollectorRegistry())
    registry = operator.registry
    changing = {h.id for h in registry._changing.get_all_handlers()}
    watching = {h.id for h in registry._watching.get_all_handlers()}
    indexing = {h.id for h in registry._indexing.get_all_handlers()}
    activities = {h.id for h in registry._activities.get_all_handlers()}
    assert changing == {"reconcile", "reconcile/spec"}  # kopf suffixes field handlers
    assert watching == {"store_event"}  # never Secrets: they are read by name
    assert indexing == set()
    assert {"startup", "cleanup", "login"} <= activities
    # No timers, daemons or non-optional deletion handlers: kopf adds no finalizer, so a
    # RunLogStore can always be deleted, operator running or not.
    assert not registry._spawning.get_all_handlers()
    assert not any(h.requires_finalizer for h in registry._changing.get_all_handlers())


def test_missing_kubeconfig_is_a_clear_login_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.setenv("HOME", str(tmp_path))
    operator = build_operator(OperatorSettings(**NO_WEBHOOK), prometheus=CollectorRegistry())
    with caplog.at_level(logging.ERROR), pytest.raises(kopf.LoginError, match="nonexistent"):
        operator.api.login()


def test_malformed_kubeconfig_does_not_echo_its_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("users:\n- user: {token: sekrit-token\n  : [\n", encoding="utf-8")
    monkeypatch.setenv("KUBECONFIG", str(config))
    operator = build_operator(OperatorSettings(**NO_WEBHOOK), prometheus=CollectorRegistry())
    with pytest.raises(kopf.LoginError, match="malformed") as caught:
        operator.api.login()
    assert "sekrit-token" not in str(caught.value)
