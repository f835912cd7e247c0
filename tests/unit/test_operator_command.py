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
from runlog_relay.operator.command import options_from_args
from runlog_relay.operator.handlers import HandlerOptions, configure_settings
from runlog_relay.operator.runner import OperatorOptions, build_operator


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser(only="operator").parse_args(["operator", *argv])


def test_defaults() -> None:
    options = options_from_args(parse())
    assert options.clusterwide and options.namespaces == ()
    assert (options.metrics_port, options.liveness_port) == (9464, 8080)
    assert options.peering is None
    assert options.controller.recheck_interval == 300


def test_namespaces_ports_peering_and_tuning() -> None:
    options = options_from_args(
        parse(
            "-n",
            "team-a",
            "--namespace",
            "team-*",
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
    assert options.namespaces == ("team-a", "team-*") and not options.clusterwide
    assert options.metrics_port == 0 and options.liveness_port is None
    assert (options.peering, options.priority) == ("runlog-relay", 7)
    assert options.controller.recheck_interval == 30
    assert options.controller.bucket_timeout == 3


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


def test_peering_without_priority_picks_distinct_random_ones() -> None:
    priorities = {
        build_operator(
            OperatorOptions(peering="relay"), prometheus=CollectorRegistry()
        ).handler_options.priority
        for _ in range(5)
    }
    assert len(priorities) == 5 and all(p > 0 for p in priorities)
    fixed = build_operator(OperatorOptions(peering="relay", priority=3))
    assert fixed.handler_options.priority == 3


def test_registry_has_the_handlers_and_no_finalizer_needing_ones() -> None:
    operator = build_operator(OperatorOptions(), prometheus=CollectorRegistry())
    registry = operator.registry
    changing = {h.id for h in registry._changing.get_all_handlers()}
    watching = {h.id for h in registry._watching.get_all_handlers()}
    indexing = {h.id for h in registry._indexing.get_all_handlers()}
    activities = {h.id for h in registry._activities.get_all_handlers()}
    assert changing == {"reconcile", "reconcile/spec"}  # kopf suffixes field handlers
    assert watching == {"store_event", "secret_event"}
    assert indexing == {"stores_by_secret"}
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
    operator = build_operator(OperatorOptions(), prometheus=CollectorRegistry())
    with caplog.at_level(logging.ERROR), pytest.raises(kopf.LoginError, match="nonexistent"):
        operator.api.login()


def test_malformed_kubeconfig_does_not_echo_its_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text("users:\n- user: {token: sekrit-token\n  : [\n", encoding="utf-8")
    monkeypatch.setenv("KUBECONFIG", str(config))
    operator = build_operator(OperatorOptions(), prometheus=CollectorRegistry())
    with pytest.raises(kopf.LoginError, match="malformed") as caught:
        operator.api.login()
    assert "sekrit-token" not in str(caught.value)
