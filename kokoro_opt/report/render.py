"""Render a `Report` as Markdown and as one self-contained HTML page with plots.

The HTML page needs nothing but itself: styles are inline and every plot is a PNG made with
matplotlib (its object API on the Agg canvas, so no GUI backend and no global pyplot state)
embedded as a base64 `data:` URI. Plots whose data are absent (no speed, no WER, no trade-off)
are left out with a sentence saying why, never drawn empty.
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kokoro_opt.report.files import write_text_atomic
from kokoro_opt.report.schema import REPORT_FILE, ModelEntry, Report, report_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
MB = 1e6
_TEXT_CLIP = 60


@dataclass(frozen=True)
class Plot:
    """One figure of the HTML page: an id, a caption, and PNG bytes (None when not drawable)."""

    key: str
    title: str
    png: bytes | None
    why_missing: str = ""


# --------------------------------------------------------------------------- public API


def write_report_dir(
    report: Report, run_dir: str | Path, *, include_json: bool = True
) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `run_dir`, each atomically.

    Everything is rendered before the first file is written, so a rendering error leaves the
    folder as it was. `include_json=False` re-renders md/html and leaves report.json alone.
    """
    run_dir = Path(run_dir)
    texts = {REPORT_FILE: report_json(report)} if include_json else {}
    texts[MARKDOWN_FILE] = render_markdown(report)
    texts[HTML_FILE] = render_html(report)
    return {name: write_text_atomic(run_dir / name, text) for name, text in texts.items()}


def render_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown (tables; no plots)."""
    out: list[str] = [f"# {_title(report)}", ""]
    out += [f"- {k}: {v}" for k, v in _run_facts(report)]
    out.append("")
    for title, header, rows in _tables(report):
        out += [f"## {title}", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---" for _ in header) + "|")
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        out.append("")
    if report.notes:
        out += ["## Notes", ""] + [f"- {_md_cell(n)}" for n in report.notes] + [""]
    out.append(
        f"_Report schema version {report.schema_version}; see reports/README.md for how to "
        "read it._"
    )
    return "\n".join(out) + "\n"


def render_html(report: Report) -> str:
    """The report as one offline HTML page: facts, plots (base64 PNG) and tables."""
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_h(_title(report))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_h(_title(report))}</h1>",
        '<table class="facts">',
        *(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in _run_facts(report)),
        "</table>",
        "<h2>Plots</h2>",
    ]
    for plot in make_plots(report):
        if plot.png is None:
            parts.append(f'<p class="missing" id="{plot.key}">{_h(plot.title)}: ')
            parts.append(f"{_h(plot.why_missing)}</p>")
            continue
        data = base64.b64encode(plot.png).decode("ascii")
        parts.append(
            f'<figure id="{plot.key}"><img class="plot" alt="{_h(plot.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_h(plot.title)}</figcaption>'
            "</figure>"
        )
    for title, header, rows in _tables(report):
        parts.append(f"<h2>{_h(title)}</h2><table><thead><tr>")
        parts += [f"<th>{_h(c)}</th>" for c in header]
        parts.append("</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>")
        parts.append("</tbody></table>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{_h(n)}</li>" for n in report.notes]
        parts.append("</ul>")
    parts.append(
        f'<p class="foot">Report schema version {report.schema_version}. See reports/README.md '
        "for how to read it.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


def make_plots(report: Report) -> list[Plot]:
    """Every plot of the HTML page, in page order."""
    makers: list[tuple[str, str, Callable[[Report], Figure | str]]] = [
        ("plot-speed", "Latency and real-time factor per model", _fig_speed),
        ("plot-scatter", "Size vs RTF, coloured by WER", _fig_scatter),
        ("plot-quality", "Intelligibility and distance to the reference", _fig_quality),
        ("plot-utterances", "Latency per utterance", _fig_utterances),
        ("plot-tradeoff", "Speed vs fidelity trade-off", _fig_tradeoff),
    ]
    plots = []
    for key, title, make in makers:
        fig = make(report)
        if isinstance(fig, str):
            plots.append(Plot(key, title, None, fig))
        else:
            plots.append(Plot(key, title, _png(fig)))
    return plots


# --------------------------------------------------------------------------- tables


def _tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    rows = []
    for m in report.models:
        s = m.speed
        comp = report.comparison(m.name)
        rows.append(
            [
                m.name,
                f"{m.size_bytes / MB:.1f}",
                m.quant_style,
                _num(s.latency_ms.median if s else None, 0),
                _num(s.latency_ms.p90 if s else None, 0),
                _num(s.rtf.median if s else None, 3),
                _num(s.rtf.p90 if s else None, 3),
                _num(s.ttfa_ms.p50 if s else None, 0),
                _num(s.ttfa_ms.p95 if s else None, 0),
                _num(s.peak_rss_mb if s else None, 0),
                _num(s.load_s if s else None, 2),
                f"{comp.speedup:.2f}x" if comp else "-",
            ]
        )
    tables.append(
        (
            "Models and speed",
            [
                "model",
                "size MB",
                "quantization",
                "latency ms (median)",
                "latency ms (p90)",
                "RTF (median)",
                "RTF (p90)",
                "TTFA ms (p50)",
                "TTFA ms (p95)",
                "peak RSS MB",
                "load s",
                "speedup",
            ],
            rows,
        )
    )
    if any(m.quality for m in report.models):
        rows = []
        for m in report.models:
            q = m.quality
            rows.append(
                [
                    m.name,
                    _pct(q.wer if q else None),
                    _pct(q.cer if q else None),
                    _num(q.logmel_distance if q else None, 3),
                    _num(q.mcd_db if q else None, 2),
                    _num(q.duration_ratio if q else None, 3),
                    _num(q.f0_rmse_cents if q else None, 0),
                    (q.reference or "(itself)") if q else "-",
                    str(q.n_utterances) if q else "-",
                    _num(q.asr_seconds if q else None, 1),
                ]
            )
        tables.append(
            (
                "Quality",
                [
                    "model",
                    "WER",
                    "CER",
                    "log-mel distance",
                    "MCD dB",
                    "duration ratio",
                    "F0 RMSE cents",
                    "reference",
                    "utterances",
                    "ASR s",
                ],
                rows,
            )
        )
    if report.comparisons:
        tables.append(
            (
                "Speed comparisons (interleaved runs)",
                ["model", "reference", "speedup", "texts", "interleaved"],
                [
                    [c.model, c.reference, f"{c.speedup:.2f}x", str(c.n_texts), _yes(c.interleaved)]
                    for c in report.comparisons
                ],
            )
        )
    if any(m.speed and m.speed.concurrency for m in report.models):
        rows = []
        for m in report.models:
            c = m.speed.concurrency if m.speed else None
            if c is None:
                continue
            rows.append(
                [
                    m.name,
                    str(c.streams),
                    _num(c.throughput_audio_s_per_s, 2),
                    _num(c.rtf_median, 3),
                    _num(c.rtf_max, 3),
                    str(len(c.errors)),
                ]
            )
        tables.append(
            (
                "Concurrent streams",
                ["model", "streams", "audio s per s", "RTF (median)", "RTF (max)", "errors"],
                rows,
            )
        )
    if report.tradeoff:
        t = report.tradeoff
        tables.append(
            (
                f"Trade-off: {t.title}" + (f" (budget: {t.budget})" if t.budget else ""),
                ["step", t.speed_label, t.fidelity_label, "WER", "log-mel", "size MB", "pinned"]
                + ["meets budget", "chosen"],
                [
                    [
                        s.name,
                        f"{s.speed:.2f}",
                        f"{s.fidelity:.4g}",
                        _pct(s.wer),
                        _num(s.logmel_distance, 3),
                        _num(s.size_bytes / MB if s.size_bytes is not None else None, 1),
                        ", ".join(s.pinned) or "-",
                        _yes(s.accepted),
                        "yes" if s.name == t.chosen else "",
                    ]
                    for s in t.steps
                ],
            )
        )
    if report.utterances:
        tables.append(
            (
                "Per utterance",
                ["model", "id", "audio s", "latency ms (median)", "TTFA ms", "WER", "log-mel"]
                + ["text", "transcript", "wav"],
                [
                    [
                        r.model,
                        r.utterance_id,
                        _num(r.audio_s, 2),
                        _num(statistics.median(r.latency_ms) if r.latency_ms else None, 0),
                        _num(r.ttfa_ms, 0),
                        _pct(r.wer),
                        _num(r.logmel_distance, 3),
                        _clip(r.text),
                        _clip(r.transcript) if r.transcript is not None else "-",
                        r.wav or "-",
                    ]
                    for r in report.utterances
                ],
            )
        )
    return tables


def _run_facts(report: Report) -> list[tuple[str, str]]:
    run, host = report.run, report.run.host
    facts = [
        ("created", run.created.isoformat(timespec="seconds")),
        ("kokoro-opt", run.kokoro_opt_version),
        ("command", " ".join(run.command) or "-"),
        ("CPU", f"{host.cpu_model or '?'} ({host.cores} logical cores)"),
        ("platform", f"{host.platform}, Python {host.python}"),
        ("onnxruntime", host.onnxruntime_version or "not installed"),
        ("provider", f"{host.provider}, threads {host.threads or 'default'}"),
        ("reference model", report.reference),
    ]
    for label, value in (
        ("voice", run.voice),
        ("language", run.lang),
        ("speed", None if run.speed is None else f"{run.speed:g}"),
        ("texts", run.texts),
        ("ASR", run.asr_model),
    ):
        if value is not None:
            facts.append((label, value))
    facts += [(k, "-" if v is None else str(v)) for k, v in sorted(run.settings.items())]
    return facts


def _title(report: Report) -> str:
    if report.run.title:
        return report.run.title
    return "kokoro-opt report: " + " vs ".join(m.name for m in report.models)


# --------------------------------------------------------------------------- plots


def _fig_speed(report: Report) -> Figure | str:
    speeds = [(m.name, m.speed) for m in report.models if m.speed]
    if not speeds:
        return "no model in this report has speed numbers (run kokoro-opt bench)."
    fig, (ax_lat, ax_rtf) = _figure(ncols=2, width=10, height=3.6)
    names = [name for name, _ in speeds]
    xs = list(range(len(speeds)))
    panels = (
        (ax_lat, [s.latency_ms for _, s in speeds], "latency ms", "Latency per utterance"),
        (ax_rtf, [s.rtf for _, s in speeds], "RTF", "Real-time factor (lower is faster)"),
    )
    for ax, stats, label, title in panels:
        bars = ax.bar(xs, [st.median for st in stats], color=[_colour(i) for i in xs])
        ax.bar_label(bars, fmt="%.3g", label_type="center", fontsize=8, color="white")
        ax.scatter(xs, [st.p90 for st in stats], marker="_", s=300, color="black", zorder=3)
        ax.set_ylabel(label)
        ax.set_title(f"{title} (bar: median, tick: p90)", fontsize=9)
        ax.set_xticks(xs, names, rotation=15, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return fig


def _fig_scatter(report: Report) -> Figure | str:
    models = [m for m in report.models if m.speed]
    if not models:
        return "no model in this report has speed numbers, so there is no RTF to plot."
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    fig, (ax,) = _figure(width=7, height=4.2)
    wers = [_wer(m) for m in models]
    known = [w for w in wers if w is not None]
    norm = Normalize(vmin=min(known, default=0.0), vmax=max(max(known, default=0.0), 1e-9))
    if known and norm.vmax <= norm.vmin:
        norm = Normalize(vmin=norm.vmin - 0.005, vmax=norm.vmin + 0.005)
    cmap = colormaps["RdYlGn_r"]
    for m, w in zip(models, wers, strict=True):
        x, y = m.size_bytes / MB, m.speed.rtf.median if m.speed else 0.0
        if w is None:
            ax.scatter([x], [y], s=160, facecolors="none", edgecolors="grey", linewidths=1.5)
            label = f"{m.name}\n(no WER)"
        else:
            ax.scatter([x], [y], s=160, color=cmap(norm(w)), edgecolors="black", linewidths=0.5)
            label = f"{m.name}\nWER {w * 100:.1f} %"
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(8, 4), fontsize=8)
    if known:
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax)
        bar.set_label("WER (fraction)")
    if any(w is None for w in wers):
        ax.scatter([], [], s=80, facecolors="none", edgecolors="grey", label="no WER measured")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("model size (MB)")
    ax.set_ylabel("RTF, median (lower is faster)")
    ax.set_title("Size vs speed vs intelligibility (down-left and green is better)", fontsize=9)
    ax.margins(0.25)
    ax.grid(alpha=0.3)
    return fig


def _fig_quality(report: Report) -> Figure | str:
    models = [m for m in report.models if m.quality]
    if not models:
        return "no model in this report has quality numbers (run kokoro-opt eval)."
    fig, (ax_wer, ax_dist) = _figure(ncols=2, width=10, height=3.6)
    xs = list(range(len(models)))
    names = [m.name for m in models]
    for ax, values, label, scale in (
        (ax_wer, [_wer(m) for m in models], "WER %", 100.0),
        (ax_dist, [m.quality.logmel_distance if m.quality else None for m in models], "", 1.0),
    ):
        heights = [0.0 if v is None else v * scale for v in values]
        bars = ax.bar(xs, heights, color=[_colour(i) for i in xs])
        ax.bar_label(
            bars, labels=["n/a" if v is None else f"{v * scale:.3g}" for v in values], fontsize=8
        )
        ax.set_xticks(xs, names, rotation=15, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        if label:
            ax.set_ylabel(label)
    ax_wer.set_title("ASR word error rate (lower is more intelligible)", fontsize=9)
    ax_dist.set_ylabel("log-mel distance")
    ax_dist.set_title("Distance to the reference after DTW (lower is closer)", fontsize=9)
    return fig


def _fig_utterances(report: Report) -> Figure | str:
    series = []
    for i, m in enumerate(report.models):
        rows = [r for r in report.rows(m.name) if r.latency_ms]
        if rows:
            series.append((i, m, rows))
    if not series:
        return "no per-utterance latencies in this report (run kokoro-opt bench)."
    fig, (ax,) = _figure(width=10, height=4)
    use_audio = all(r.audio_s is not None for _, _, rows in series for r in rows)
    for i, m, rows in series:
        rows = sorted(rows, key=lambda r: r.audio_s or 0.0) if use_audio else rows
        xs = [r.audio_s or 0.0 for r in rows] if use_audio else list(range(len(rows)))
        med = [statistics.median(r.latency_ms) for r in rows]
        lo = [m_ - min(r.latency_ms) for m_, r in zip(med, rows, strict=True)]
        hi = [max(r.latency_ms) - m_ for m_, r in zip(med, rows, strict=True)]
        ax.errorbar(
            xs,
            med,
            yerr=[lo, hi],
            marker="o",
            ms=4,
            capsize=2,
            lw=1,
            color=_colour(i),
            label=m.name,
        )
    ax.set_xlabel("audio duration (s)" if use_audio else "utterance (report order)")
    ax.set_ylabel("latency ms (median; bars: min-max over runs)")
    ax.set_title("Latency per utterance", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _fig_tradeoff(report: Report) -> Figure | str:
    t = report.tradeoff
    if t is None:
        return "this run has no trade-off search (pin search and int4 trials add one)."
    fig, (ax,) = _figure(width=8, height=4.5)
    xs = [s.fidelity for s in t.steps]
    ys = [s.speed for s in t.steps]
    ax.plot(xs, ys, color="grey", lw=1, zorder=1)
    for n, s in enumerate(t.steps):
        colour = "tab:green" if s.accepted else ("tab:red" if s.accepted is False else "tab:blue")
        size = 160 if s.name == t.chosen else 50
        ax.scatter([s.fidelity], [s.speed], s=size, color=colour, edgecolors="black", zorder=2)
        ax.annotate(
            f"{n + 1}. {s.name}",
            (s.fidelity, s.speed),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=7,
        )
    ax.set_xlabel(t.fidelity_label + " (lower is closer)")
    ax.set_ylabel(t.speed_label + " (higher is faster)")
    title = t.title + (f"; chosen: {t.chosen}" if t.chosen else "")
    ax.set_title(title + "\ngreen: meets the budget, red: does not, big: chosen", fontsize=9)
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    return fig


def _figure(*, ncols: int = 1, width: float, height: float) -> tuple[Figure, Sequence]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _wer(m: ModelEntry) -> float | None:
    return m.quality.wer if m.quality else None


# --------------------------------------------------------------------------- formatting


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _TEXT_CLIP else text[: _TEXT_CLIP - 1] + "…"


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _h(text: str) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
thead th{background:#f4f4f4}table.facts th{background:#f9f9f9;font-weight:600}
figure{margin:1em 0}img.plot{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.missing{color:#777;font-style:italic}
.foot{color:#777;font-size:.8em;margin-top:2em}
""".replace("\n", "")
