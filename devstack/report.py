"""``python -m devstack report``: the model history as one self-contained HTML page.

Charts are SVG written here (no plotting library, no script, no network): every
version's metric over time with the champion line, the champion's confusion matrix and
per-class precision and recall, and each upload's rows in, out and rejected. Every mark
carries its numbers as ``data-*`` attributes and a ``<title>`` tooltip; the tables
beside the charts hold the same numbers.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devstack.errors import DevstackError
from devstack.history import (
    GcsStorage,
    History,
    PipelineError,
    Run,
    Storage,
    Version,
    load_history,
)
from devstack.stack import StackState

REPORT_NAME = "report.html"  # in the state folder, unless --out says otherwise
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.promoted { color: #1a7f37; } .refused { color: #c62828; } .undecided { color: #777; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg .axis { stroke: #999; } svg .grid { stroke: #eee; }
.note { color: #555; }
"""
_PROMOTED, _REFUSED, _UNDECIDED = "#1a7f37", "#c62828", "#888888"
_PRECISION, _RECALL, _ROWS_OUT = "#1f6feb", "#f0883e", "#1a7f37"
_REJECTION_COLOURS = ("#c62828", "#8e24aa", "#f9a825", "#6d4c41", "#00838f", "#5c6bc0")


def write_report(storage: Storage, metric: str, out: Path) -> dict[str, Any]:
    """Read the registry in ``storage``, write the page to ``out``; return what it shows."""
    try:
        history = load_history(storage, metric)
    except PipelineError as error:  # a missing bucket, no permission, the network
        raise DevstackError(f"cannot read the registry in gs://{storage.bucket}: {error}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(history), encoding="utf-8")
    return {
        "report": str(out.resolve()),
        "bucket": history.bucket,
        "versions": len(history.versions),
        "uploads": len(history.runs),
        "champion_version": history.champion.version if history.champion else None,
    }


def local_storage(state: StackState) -> Storage:
    """The local stack's bucket (fake-gcs-server), through the functions' own storage."""
    return GcsStorage(state.bucket, state.project, client=state.storage_client())


def cloud_storage(bucket: str) -> Storage:
    """A real bucket, with the caller's default credentials."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    try:
        client = storage.Client()
    except DefaultCredentialsError as error:
        raise DevstackError(
            f"cannot read gs://{bucket}: no Google credentials ({error}); run "
            "'gcloud auth application-default login'"
        ) from None
    return GcsStorage(bucket, "", client=client)


def render(history: History, *, generated_at: datetime | None = None) -> str:
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    sections = [
        _section_versions(history),
        _section_champion(history),
        _section_runs(history.runs),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>Model history of gs://{_e(history.bucket)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Model history of gs://{_e(history.bucket)}</h1>"
        f"<p class='note'>{len(history.versions)} model versions, {len(history.runs)} uploads; "
        f"promotion metric <code>{_e(history.metric)}</code>; generated {generated}.</p>"
        + "".join(sections)
        + "</body></html>\n"
    )


# ---------------------------------------------------------------- versions over time


def _section_versions(history: History) -> str:
    if not history.versions:
        return "<h2>Versions</h2><p class='note'>No model version is registered yet.</p>"
    rows = "".join(_version_row(history, version) for version in reversed(history.versions))
    return (
        f"<h2>Every version's {_e(history.metric)} over time, and the champion line</h2>"
        + _metric_chart(history)
        + "<table id='versions'><tr><th>version</th><th>created</th><th>model</th>"
        "<th>accuracy</th><th>f1_macro</th><th>decision</th><th>why</th>"
        "<th>trained from</th><th>rows train / test</th></tr>" + rows + "</table>"
    )


def _decision(version: Version) -> str:
    return {True: "promoted", False: "refused", None: "undecided"}[version.promoted]


def _version_row(history: History, version: Version) -> str:
    champion = history.champion is not None and history.champion.version == version.version
    rows = version.rows
    return (
        f"<tr data-version='{_e(version.version)}'>"
        f"<td><code>{_e(version.version)}</code>{' (champion)' if champion else ''}</td>"
        f"<td>{_time(version.created_at)}</td><td>{_e(version.model_type)}</td>"
        f"{_number_cell(version.metrics.get('accuracy'))}"
        f"{_number_cell(version.metrics.get('f1_macro'))}"
        f"<td class='{_decision(version)}'>{_decision(version)}</td>"
        f"<td>{_e(version.reason)}</td>"
        f"<td>{_e(version.source.name)} "
        f"<span class='note'>gen {version.source.generation}</span></td>"
        f"<td class='number'>{rows.get('train', '')} / {rows.get('test', '')}</td></tr>"
    )


@dataclass(frozen=True)
class _Frame:
    """A plot area inside an SVG: pixel bounds and the data ranges they show."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int

    def x(self, fraction: float) -> float:
        return round(self.left + fraction * (self.width - self.left - self.right), 1)

    def y(self, fraction: float) -> float:
        return round(
            self.height - self.bottom - fraction * (self.height - self.top - self.bottom), 1
        )


def _metric_chart(history: History) -> str:
    frame = _Frame(width=900, height=320, left=50, right=20, top=15, bottom=40)
    versions = history.versions
    values = [float(version.metrics[history.metric]) for version in versions]
    low = max(0.0, min(int(min(values) * 10 - 0.5) / 10, 0.9))
    # A margin of 5 % of the time shown (at least a second) keeps edge points whole.
    margin = max((versions[-1].created_at - versions[0].created_at) / 20, timedelta(seconds=1))
    start = versions[0].created_at - margin
    end = versions[-1].created_at + margin
    span = (end - start).total_seconds()

    def x(moment: datetime) -> float:
        return frame.x((moment - start).total_seconds() / span)

    def y(value: float) -> float:
        return frame.y((value - low) / (1.0 - low))

    parts = [_y_axis(frame, low, 1.0, y)]
    parts.append(
        f"<text x='{frame.left}' y='{frame.height - 8}'>{_time(start)}</text>"
        f"<text x='{frame.width - frame.right}' y='{frame.height - 8}' text-anchor='end'>"
        f"{_time(end)}</text>"
    )
    steps = history.champion_steps()
    if steps:
        points: list[tuple[float, float]] = []
        for index, step in enumerate(steps):
            level = y(float(step.metrics[history.metric]))
            points.append((x(step.created_at), level))
            following = steps[index + 1].created_at if index + 1 < len(steps) else None
            points.append((x(following) if following else frame.x(1.0), level))
        path = " ".join(f"{px},{py}" for px, py in points)
        names = " ".join(step.version for step in steps)
        parts.append(
            f"<polyline class='champion-line' data-versions='{_e(names)}' points='{path}' "
            f"fill='none' stroke='{_PROMOTED}' stroke-width='2' stroke-opacity='0.5'>"
            "<title>champion</title></polyline>"
        )
    for version, value in zip(versions, values, strict=True):
        decision = _decision(version)
        colour = {"promoted": _PROMOTED, "refused": _REFUSED}.get(decision, _UNDECIDED)
        parts.append(
            f"<circle class='version {decision}' data-version='{_e(version.version)}' "
            f"data-value='{value!r}' cx='{x(version.created_at)}' cy='{y(value)}' r='6' "
            f"fill='{colour if decision == 'promoted' else 'white'}' stroke='{colour}' "
            f"stroke-width='2'><title>{_e(version.version)}: {history.metric} {value:.4f}, "
            f"{decision} ({_e(version.reason)})</title></circle>"
        )
    legend = _legend(
        frame,
        [("promoted", _PROMOTED), ("refused", _REFUSED), ("undecided", _UNDECIDED)],
    )
    return _svg("metric-over-time", frame, [*parts, legend])


# ---------------------------------------------------------------- the champion


def _section_champion(history: History) -> str:
    champion = history.champion
    if champion is None:
        return "<h2>Champion</h2><p class='note'>No champion has been promoted yet.</p>"
    metrics = champion.metrics
    confusion = metrics["confusion_matrix"]
    per_class = metrics["per_class"]
    rows = "".join(
        f"<tr data-class='{_e(label)}'><td>{_e(label)}</td>"
        f"{_number_cell(values['precision'])}{_number_cell(values['recall'])}"
        f"<td class='number'>{values['support']}</td></tr>"
        for label, values in per_class.items()
    )
    return (
        f"<h2>Champion <code>{_e(champion.version)}</code></h2>"
        f"<p>{_e(champion.model_type)} trained from {_e(champion.source.name)} "
        f"(generation {champion.source.generation}); accuracy "
        f"{float(metrics['accuracy']):.4f}, f1_macro {float(metrics['f1_macro']):.4f} on the "
        "held-out split.</p>"
        "<h3>Confusion matrix (rows: actual, columns: predicted)</h3>"
        + _confusion_chart(confusion["labels"], confusion["matrix"])
        + "<h3>Per-class precision and recall</h3>"
        + _per_class_chart(per_class)
        + "<table id='per-class'><tr><th>class</th><th>precision</th><th>recall</th>"
        "<th>support</th></tr>" + rows + "</table>"
    )


def _confusion_chart(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    cell = 44
    margin = 90
    size = margin + cell * len(labels) + 10
    frame = _Frame(width=size, height=size, left=margin, right=10, top=margin, bottom=10)
    largest = max((count for row in matrix for count in row), default=0) or 1
    parts = []
    for index, label in enumerate(labels):
        centre = margin + index * cell + cell / 2
        parts.append(
            f"<text x='{margin - 6}' y='{centre + 4}' text-anchor='end'>{_e(label)}</text>"
            f"<text x='{centre}' y='{margin - 6}' text-anchor='middle'>{_e(label)}</text>"
        )
    for row_index, row in enumerate(matrix):
        for column_index, count in enumerate(row):
            shade = round(0.08 + 0.82 * count / largest, 3)
            left, top = margin + column_index * cell, margin + row_index * cell
            parts.append(
                f"<rect class='cell' data-actual='{_e(labels[row_index])}' "
                f"data-predicted='{_e(labels[column_index])}' data-count='{count}' "
                f"x='{left}' y='{top}' width='{cell}' height='{cell}' fill='{_PRECISION}' "
                f"fill-opacity='{shade}' stroke='white'><title>actual "
                f"{_e(labels[row_index])}, predicted {_e(labels[column_index])}: {count}"
                f"</title></rect><text x='{left + cell / 2}' y='{top + cell / 2 + 4}' "
                f"text-anchor='middle'>{count}</text>"
            )
    return _svg("confusion-matrix", frame, parts)


def _per_class_chart(per_class: dict[str, dict[str, Any]]) -> str:
    group = 56
    frame = _Frame(
        width=max(320, 60 + group * len(per_class)),
        height=250,
        left=50,
        right=10,
        top=15,
        bottom=55,
    )

    def y(value: float) -> float:
        return frame.y(value)

    parts = [_y_axis(frame, 0.0, 1.0, y)]
    bar = 18
    for index, (label, values) in enumerate(per_class.items()):
        left = frame.left + 10 + index * group
        for offset, (name, colour) in enumerate((("precision", _PRECISION), ("recall", _RECALL))):
            value = float(values[name])
            top = y(value)
            parts.append(
                f"<rect class='{name}' data-class='{_e(label)}' data-value='{value!r}' "
                f"x='{left + offset * bar}' y='{top}' width='{bar - 2}' "
                f"height='{round(y(0.0) - top, 1)}' fill='{colour}'><title>{_e(label)} "
                f"{name} {value:.4f}</title></rect>"
            )
        parts.append(
            f"<text x='{left + bar}' y='{frame.height - frame.bottom + 14}' "
            f"text-anchor='middle'>{_e(label)}</text>"
        )
    parts.append(_legend(frame, [("precision", _PRECISION), ("recall", _RECALL)]))
    return _svg("per-class", frame, parts)


# ---------------------------------------------------------------- uploads


def _section_runs(runs: list[Run]) -> str:
    if not runs:
        return "<h2>Uploads</h2><p class='note'>No upload has been processed yet.</p>"
    rows = "".join(_run_row(run) for run in reversed(runs))
    return (
        "<h2>Uploads: rows in, rows kept and why rows or files were rejected</h2>"
        + _runs_chart(runs)
        + "<table id='runs'><tr><th>upload</th><th>generation</th><th>outcome</th>"
        "<th>rows in</th><th>rows out</th><th>rows rejected, by reason</th>"
        "<th>model versions</th></tr>" + rows + "</table>"
    )


def _run_row(run: Run) -> str:
    outcome = (
        f"rejected: <code>{_e(run.reason or '')}</code> {_e(run.detail or '')}"
        if run.status == "rejected"
        else "processed"
    )
    reasons = ", ".join(f"{_e(reason)} {count}" for reason, count in run.row_rejections.items())
    versions = " ".join(f"<code>{_e(version)}</code>" for version in run.model_versions)
    return (
        f"<tr data-object='{_e(run.source.name)}' data-generation='{run.source.generation}'>"
        f"<td>{_e(run.source.name)}</td><td class='number'>{run.source.generation}</td>"
        f"<td class='{'refused' if run.status == 'rejected' else 'promoted'}'>{outcome}</td>"
        f"<td class='number'>{run.rows_in}</td><td class='number'>{run.rows_out}</td>"
        f"<td>{reasons or '-'}</td><td>{versions or '-'}</td></tr>"
    )


def _runs_chart(runs: list[Run]) -> str:
    height_per_run = 22
    frame = _Frame(
        width=900,
        height=50 + height_per_run * len(runs),
        left=230,
        right=60,
        top=10,
        bottom=40,
    )
    largest = max((run.rows_in for run in runs), default=0) or 1
    reasons = sorted({reason for run in runs for reason in run.row_rejections})
    colours = {
        reason: _REJECTION_COLOURS[index % len(_REJECTION_COLOURS)]
        for index, reason in enumerate(reasons)
    }
    parts = []
    for index, run in enumerate(runs):
        top = frame.top + index * height_per_run
        label = f"{run.source.name} ({run.source.generation})"
        parts.append(
            f"<text x='{frame.left - 6}' y='{top + 14}' text-anchor='end'>{_e(label)}</text>"
        )
        left = float(frame.left)
        segments = [("rows-out", "kept", run.rows_out, _ROWS_OUT)] + [
            ("rows-rejected", reason, count, colours[reason])
            for reason, count in run.row_rejections.items()
        ]
        for kind, name, count, colour in segments:
            width = round((frame.x(1.0) - frame.left) * count / largest, 1)
            parts.append(
                f"<rect class='{kind}' data-object='{_e(run.source.name)}' "
                f"data-reason='{_e(name)}' data-rows='{count}' x='{left}' y='{top + 3}' "
                f"width='{width}' height='{height_per_run - 6}' fill='{colour}'><title>"
                f"{_e(label)}: {_e(name)} {count}</title></rect>"
            )
            left += width
        if run.status == "rejected":
            parts.append(
                f"<text class='file-rejected' x='{left + 4}' y='{top + 14}' fill='{_REFUSED}'>"
                f"rejected: {_e(run.reason or '')}</text>"
            )
    legend = [("kept", _ROWS_OUT), *((reason, colours[reason]) for reason in reasons)]
    return _svg("rows-per-upload", frame, [*parts, _legend(frame, legend)])


# ---------------------------------------------------------------- SVG pieces


def _svg(name: str, frame: _Frame, parts: Iterable[str]) -> str:
    return (
        f"<svg id='{name}' class='chart' xmlns='http://www.w3.org/2000/svg' "
        f"width='{frame.width}' height='{frame.height}' "
        f"viewBox='0 0 {frame.width} {frame.height}' role='img'>" + "".join(parts) + "</svg>"
    )


def _y_axis(frame: _Frame, low: float, high: float, y: Any) -> str:
    ticks = []
    steps = 5
    for index in range(steps + 1):
        value = low + (high - low) * index / steps
        level = y(value)
        ticks.append(
            f"<line class='grid' x1='{frame.left}' x2='{frame.x(1.0)}' y1='{level}' "
            f"y2='{level}'/><text x='{frame.left - 6}' y='{level + 4}' text-anchor='end'>"
            f"{value:.2f}</text>"
        )
    return (
        "".join(ticks) + f"<line class='axis' x1='{frame.left}' x2='{frame.left}' "
        f"y1='{frame.y(0.0)}' y2='{frame.y(1.0)}'/>"
    )


def _legend(frame: _Frame, entries: Sequence[tuple[str, str]]) -> str:
    parts = []
    left = frame.left
    for label, colour in entries:
        parts.append(
            f"<rect x='{left}' y='{frame.height - 30}' width='10' height='10' fill='{colour}'/>"
            f"<text x='{left + 14}' y='{frame.height - 21}'>{_e(label)}</text>"
        )
        left += 24 + 7 * len(label)
    return "<g class='legend'>" + "".join(parts) + "</g>"


def _number_cell(value: Any) -> str:
    return f"<td class='number'>{'' if value is None else f'{float(value):.4f}'}</td>"


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
