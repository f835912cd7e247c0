"""``show --html``: one run as a standalone HTML page (no scripts, fonts or links to fetch).

The page can be mailed, attached to a ticket or opened from a laptop with no network:
everything is inline, the timeline is made of positioned boxes (percentages of the run's
length, so it fits any window), and every value from the run log is escaped. Each row
carries ``data-step`` and ``data-status`` so tests and scripts can find it.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any

from runlog_relay.tools._common import format_seconds
from runlog_relay.tools.runmodel import Run
from runlog_relay.tools.timeline import layout_timeline

__all__ = ["STATUS_COLOURS", "render_page"]

STATUS_COLOURS = {
    "SUCCESS": "#2e7d32",
    "FAIL": "#c62828",
    "PROCESSING": "#f9a825",
    "CREATED": "#1565c0",
    "TRIGGERED": "#00838f",
}
_OTHER_COLOUR = "#6a1b9a"

_STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px;
       color: #1b1b1b; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
.status { display: inline-block; padding: 1px 8px; border-radius: 4px; color: #fff;
          font-weight: 600; }
.facts { color: #555; }
table.kv td { padding: 2px 16px 2px 0; vertical-align: top; }
table.kv td:first-child { font-family: ui-monospace, monospace; color: #0d47a1; }
code, pre, .name { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; }
.timeline { border-top: 1px solid #ddd; }
.row, .axis { display: grid; grid-template-columns: 30% 240px minmax(0, 1fr);
             align-items: center; }
.row { border-bottom: 1px solid #eee; min-height: 24px; }
.row .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-size: 13px; }
.row .meta { overflow: hidden; text-overflow: ellipsis; font-size: 12px; color: #555;
             white-space: nowrap; padding-right: 8px; }
.row .track { position: relative; height: 16px; background: #f6f6f6; }
.row .bar { position: absolute; top: 0; height: 16px; min-width: 2px; border-radius: 2px; }
.row .bar.open { opacity: .6; }
.row.composite .name { font-weight: 600; }
.axis { font-size: 12px; color: #555; }
.axis .scale { grid-column: 3; display: flex; justify-content: space-between; }
.failure { border-left: 4px solid #c62828; padding: 4px 12px; margin: 8px 0;
           background: #fff5f5; }
pre { white-space: pre-wrap; font-size: 12px; margin: 4px 0; }
.warning { color: #8d6e00; }
"""


def _colour(status: str) -> str:
    return STATUS_COLOURS.get(status, _OTHER_COLOUR)


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _percent(value: float) -> str:
    return f"{max(0.0, min(100.0, value)):.3f}%"


def render_page(run: Run) -> str:
    """The whole page as one string."""
    timeline = layout_timeline(run)
    total = timeline.total_seconds
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>run {escape(run.run_id)} · {escape(run.status)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f'<h1>run <span class="name" id="run-id">{escape(run.run_id)}</span> '
        f'<span class="status" id="run-status" style="background:{_colour(run.status)}">'
        f"{escape(run.status)}</span></h1>",
    ]
    facts = [
        f"started {_time(run.started_at)}",
        f"ended {_time(run.ended_at)}" if run.finished else "not finished",
        f"duration {format_seconds(run.duration_seconds)}",
        f"{len(run.steps)} steps, {len(run.branches)} branches",
    ]
    if run.tag:
        facts.append(f"tag {run.tag}")
    out.append(f'<p class="facts">{escape(" · ".join(facts))}</p>')
    # Seal status (issue 13, items 1-3) is reported here once the sidecar seals runs.
    out.extend(f'<p class="warning">warning: {escape(p)}</p>' for p in (*run.problems, *run.notes))

    out.append('<h2>Parameters</h2><table class="kv" id="parameters">')
    for name, parameter in run.parameters.items():
        kind = "" if parameter.kind == "json" else f" <em>({escape(parameter.kind)})</em>"
        out.append(
            f'<tr data-parameter="{escape(name)}"><td>{escape(name)}</td>'
            f"<td><code>{escape(_value(parameter.value))}</code>{kind}</td></tr>"
        )
    if not run.parameters:
        out.append("<tr><td>(none)</td></tr>")
    out.append("</table>")

    out.append('<h2>Code identities</h2><ul id="code-identities">')
    out.extend(f"<li><code>{escape(i.describe())}</code></li>" for i in run.code_identities)
    if not run.code_identities:
        out.append("<li>(none recorded)</li>")
    out.append("</ul>")

    out.append('<h2>Timeline</h2><div class="timeline" id="timeline">')
    out.append(
        '<div class="axis"><span class="scale"><span>0</span>'
        f"<span>{escape(format_seconds(total / 2))}</span>"
        f"<span>{escape(format_seconds(total))}</span></span></div>"
    )
    for span in timeline.spans:
        step = span.step
        classes = "row composite" if step.is_composite else "row"
        indent = f"padding-left:{step.depth * 16}px"
        start = f"+{format_seconds(span.offset)}" if span.offset is not None else "-"
        duration = format_seconds(span.length) if span.length is not None else "-"
        tries = f" · \u00d7{len(step.attempts)}" if len(step.attempts) > 1 else ""
        title = (
            f"{step.name} ({step.step_type}) {step.status}: started {_time(step.started_at)},"
            f" ended {_time(step.ended_at)}, {duration}{tries}"
        )
        bars = []
        for number, segment in enumerate(span.segments, start=1):
            left = segment.offset / total * 100 if total > 0 else 0.0
            width = segment.length / total * 100 if total > 0 else 100.0
            what = f"attempt {number}" if step.attempts else step.step_type
            bars.append(
                f'<div class="bar{" open" if segment.open_ended else ""}"'
                f' data-status="{escape(segment.status)}" title="{escape(what)}:'
                f' {escape(segment.status)}, {escape(format_seconds(segment.length))}"'
                # min(): a bar of no length at the very end keeps its 2px inside the track.
                f' style="left:min({_percent(left)}, 100% - 2px);'
                f"width:{_percent(min(width, 100 - left))};"
                f'background:{_colour(segment.status)}"></div>'
            )
        bar = "".join(bars)
        out.append(
            f'<div class="{classes}" data-step="{escape(step.name)}"'
            f' data-status="{escape(step.status)}" title="{escape(title)}">'
            f'<span class="name" style="{indent}">{escape(step.name)}</span>'
            f'<span class="meta">{escape(step.status)} · {escape(start)} · '
            f"{escape(duration)}{escape(tries)}</span>"
            f'<span class="track">{bar}</span></div>'
        )
    out.append("</div>")

    if run.failures:
        out.append('<h2>Failures</h2><div id="failures">')
        for failure in run.failures:
            attempt = f" (attempt {failure.attempt})" if failure.attempt is not None else ""
            out.append(
                f'<div class="failure" data-step="{escape(failure.step)}">'
                f"<strong>{escape(failure.step)}</strong>{escape(attempt)}"
                f"<pre>{escape(failure.message or '(no message)')}</pre>"
            )
            if failure.traceback:
                out.append(f'<pre class="traceback">{escape(failure.traceback)}</pre>')
                if failure.source:
                    out.append(f"<small>from {escape(failure.source)}</small>")
            out.append("</div>")
        out.append("</div>")
    out.append("</body></html>\n")
    return "\n".join(out)
