"""The Grafana dashboard and the PrometheusRule ask only for metrics the code exports.

Every PromQL expression (each panel's targets, the dashboard's variable queries, each
alert of the chart's PrometheusRule) is tokenised by :func:`metric_selectors`, and each
metric name it uses must be one that ``SidecarMetrics`` or ``OperatorMetrics`` registers
(on a fresh registry; counters as ``_total``, histograms as ``_bucket``/``_sum``/
``_count``), with only labels the metric has or the scrape adds. A renamed metric or a
typo fails here instead of leaving an empty panel or an alert that never fires. The
dashboard's structure is checked for what Grafana needs to load it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from runlog_relay.metrics import OperatorMetrics, SidecarMetrics

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "runlog-relay"
DASHBOARD = CHART / "dashboards" / "runlog-relay.json"

#: Prometheus's own series that expressions may use besides ours.
PROMETHEUS_SERIES = {"up"}
#: Labels the scrape adds (prometheus-operator's target labels, the PodMonitor's `store`).
TARGET_LABELS = {"namespace", "pod", "container", "instance", "job", "endpoint", "service", "store"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
}
#: Keywords followed by a parenthesised list of label names, not an expression.
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def exported_metrics() -> dict[str, set[str]]:
    """Every series name the code can export → the labels it carries."""
    registry = CollectorRegistry()
    SidecarMetrics(registry)
    OperatorMetrics(registry)
    names: dict[str, set[str]] = {}
    for collector in list(registry._collector_to_names):  # every registered metric object
        base = collector._name  # type: ignore[attr-defined]
        labels = set(collector._labelnames)  # type: ignore[attr-defined]
        kind = collector._type  # type: ignore[attr-defined]
        if kind == "counter":
            forms = {f"{base}_total": labels, f"{base}_created": labels}
        elif kind == "histogram":
            forms = {
                f"{base}_bucket": labels | {"le"},
                f"{base}_sum": labels,
                f"{base}_count": labels,
                f"{base}_created": labels,
            }
        else:
            forms = {base: labels}
        names.update(forms)
    return names


@dataclass
class Selector:
    name: str
    labels: set[str] = field(default_factory=set)


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<variable>\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[a-z]+)?\}?)
  | (?P<range>\[[^\]]*\])
  | (?P<number>[0-9][0-9A-Za-z.]*|\.[0-9]+)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>=~|!~|!=|==|>=|<=|[(){},=<>+\-*/%^@|])
    """,
    re.VERBOSE,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        assert match is not None, f"cannot tokenise {expr[position:]!r} in {expr!r}"
        position = match.end()
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, match.group()))
    return tokens


def _matchers(tokens: list[tuple[str, str]], start: int) -> tuple[dict[str, list[str]], int]:
    """Parse ``{label op "value", ...}`` from the ``{`` at ``start``; (matchers, after)."""
    matchers: dict[str, list[str]] = {}
    i = start + 1
    while tokens[i][1] != "}":
        kind, label = tokens[i]
        if kind == "punct" and label == ",":
            i += 1
            continue
        assert kind == "ident", f"expected a label name, got {label!r}"
        op_kind, _op = tokens[i + 1]
        value_kind, value = tokens[i + 2]
        assert op_kind == "punct" and value_kind == "string", tokens[i : i + 3]
        matchers.setdefault(label, []).append(value[1:-1])
        i += 3
    return matchers, i + 1


def metric_selectors(expr: str) -> Iterator[Selector]:
    """The metric names an expression selects, with the labels its matchers use."""
    tokens = _tokens(expr)
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in LABEL_LIST_KEYWORDS and following == "(":
            i = next(j for j in range(i + 1, len(tokens)) if tokens[j][1] == ")") + 1
            continue
        if kind == "ident" and following in ("by", "without"):
            i += 1  # an aggregation written `sum by (...) (...)`
            continue
        if kind == "ident" and text not in KEYWORDS and following != "(":
            selector = Selector(text)
            i += 1
            if following == "{":
                matchers, i = _matchers(tokens, i)
                selector.labels = set(matchers)
            yield selector
            continue
        if kind == "punct" and text == "{":
            # A selector without a name: {__name__=~"a|b", ...}.
            matchers, i = _matchers(tokens, i)
            names = [n for value in matchers.pop("__name__", []) for n in value.split("|")]
            assert names, f"a selector without a metric name in {expr!r}"
            for name in names:
                yield Selector(name, set(matchers))
            continue
        i += 1


def check_expression(expr: str, where: str) -> list[str]:
    """Problems with one expression (an empty list when it is fine)."""
    exported = exported_metrics()
    problems = []
    selectors = list(metric_selectors(expr))
    if not selectors:
        problems.append(f"{where}: selects no metric: {expr}")
    for selector in selectors:
        if selector.name in PROMETHEUS_SERIES:
            continue
        if selector.name not in exported:
            problems.append(f"{where}: {selector.name} is not exported by the code")
            continue
        unknown = selector.labels - exported[selector.name] - TARGET_LABELS
        if unknown:
            problems.append(f"{where}: {selector.name} has no label(s) {sorted(unknown)}")
    return problems


# --------------------------------------------------------------------------- the tokeniser


def test_the_tokeniser_finds_names_and_labels_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (namespace, le) (rate(a_bucket{store=~"$store",'
        ' result="x"}[$__rate_interval]))) > 2 and on (pod) b or vector(0) unless'
        ' {__name__=~"c|d", job="j"} offset 5m'
    )
    found = [(s.name, s.labels) for s in metric_selectors(expr)]
    assert found == [
        ("a_bucket", {"store", "result"}),
        ("b", set()),
        ("c", {"job"}),
        ("d", {"job"}),
    ]


def test_the_check_rejects_unknown_metrics_and_labels() -> None:
    assert check_expression("sum(rate(runlog_relay_uploads_total[5m]))", "ok") == []
    assert check_expression('runlog_relay_uploads_total{result="failure"}', "ok") == []
    problems = check_expression('rate(runlog_relay_upload_total{colour="red"}[5m])', "x")
    assert problems == ["x: runlog_relay_upload_total is not exported by the code"]
    problems = check_expression('runlog_relay_pending_files{result="x"}', "y")
    assert problems == ["y: runlog_relay_pending_files has no label(s) ['result']"]


def test_exported_metrics_include_every_form() -> None:
    names = exported_metrics()
    assert {"runlog_relay_uploads_total", "runlog_relay_sync_lag_seconds_bucket"} <= set(names)
    assert "le" in names["runlog_relay_sync_lag_seconds_bucket"]
    assert names["runlog_relay_store_ready"] == {"namespace", "store"}
    assert "runlog_relay_uploads" not in names  # a counter is only ever ..._total


# --------------------------------------------------------------------------- the dashboard


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def test_every_dashboard_query_uses_exported_metrics() -> None:
    dashboard = _dashboard()
    problems = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target['refId']}"
            problems += check_expression(target["expr"], where)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)", query)
        assert match, f"variable {variable['name']}: unexpected query {query!r}"
        problems += check_expression(match["selector"], f"variable {variable['name']}")
        # The label it lists must exist on what it selects.
        for selector in metric_selectors(match["selector"]):
            labels = exported_metrics()[selector.name] | TARGET_LABELS
            assert match["label"] in labels, (variable["name"], selector.name)
    assert not problems, "\n".join(problems)


def test_the_dashboard_covers_what_the_issue_asks_for() -> None:
    exprs = " ".join(
        target["expr"] for panel in _panels(_dashboard()) for target in panel.get("targets", [])
    )
    for metric in (
        "runlog_relay_sync_lag_seconds_bucket",
        "runlog_relay_pending_files",
        "runlog_relay_uploads_total",
        "runlog_relay_fs_write_bytes_total",
        "runlog_relay_store_ready",
        "runlog_relay_torn_files",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs


def test_the_dashboard_has_what_grafana_needs_to_load_it() -> None:
    dashboard = _dashboard()
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "runlog-relay" and dashboard["title"]
    assert dashboard["id"] is None  # provisioning and import assign their own
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    known = set(variables) | GRAFANA_BUILTINS

    ids = set()
    cells: set[tuple[int, int]] = set()
    for panel in _panels(dashboard):
        assert panel["id"] not in ids, f"duplicate panel id {panel['id']}"
        ids.add(panel["id"])
        assert panel["type"] in {"row", "stat", "timeseries", "state-timeline", "table", "gauge"}
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel.get("description"), f"panel {panel['title']!r} says nothing about itself"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            for name in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert name in known, f"panel {panel['title']!r} uses undefined ${name}"


# --------------------------------------------------------------------------- the alerts


def _rules() -> list[dict[str, Any]]:
    helm_python = pytest.importorskip("helm_python")
    values = yaml.safe_load((CHART / "ci" / "all-enabled-values.yaml").read_text())
    with helm_python.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="runlog-relay", namespace="monitoring-test")
    rule = yaml.safe_load(rendered["runlog-relay/templates/prometheusrule.yaml"])
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_every_alert_uses_exported_metrics() -> None:
    rules = _rules()
    problems = []
    for rule in rules:
        problems += check_expression(rule["expr"], f"alert {rule['alert']}")
    assert not problems, "\n".join(problems)


def test_the_alerts_the_issue_asks_for_exist_and_say_what_is_wrong() -> None:
    rules = {rule["alert"]: rule for rule in _rules()}
    expected = {
        "RunLogRelaySyncLagHigh": "runlog_relay_sync_lag_seconds_bucket",
        "RunLogRelayFileTorn": "runlog_relay_torn_files",
        "RunLogRelayStoreNotReady": "runlog_relay_store_ready",
        "RunLogRelayUploadsFailing": 'runlog_relay_uploads_total{result="failure"}',
        "RunLogRelaySidecarNotScraped": 'up{job="monitoring-test/runlog-relay-sidecars"} == 0',
        "RunLogRelayOperatorDown": 'up{job="runlog-relay", namespace="monitoring-test"}',
    }
    for alert, fragment in expected.items():
        assert fragment in rules[alert]["expr"], (alert, rules[alert]["expr"])
    assert "histogram_quantile(0.95" in rules["RunLogRelaySyncLagHigh"]["expr"]
    for rule in rules.values():
        assert re.fullmatch(r"[0-9]+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["labels"]["team"] == "data-platform"  # alertLabels reach every alert
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        # Prometheus's own templating survives Helm's.
        assert "{{ $labels" in rule["annotations"]["description"] or "$labels" not in str(rule)
