"""A self-contained, offline HTML page: tables, interactive plotly plots and heatmaps.

The page is one file with plotly's JavaScript inlined once, no CDN links and no external fonts or
stylesheets, so it opens from a copied folder with no network. It is written atomically (a temp
file in the same folder, then ``os.replace``), so a crash never leaves half a page behind.

Content is generic: build :class:`Section` objects from pandas DataFrames and call
:func:`write_html`. Every plot's div has class ``dc-plot``; a small inline script records any
JavaScript error and, after load, writes ``<pre id="dc-status">`` with JSON
``{"errors": [...], "plots": N_expected, "rendered": N_rendered}`` (``rendered`` counts the
``.dc-plot`` divs holding a plotly-rendered ``.main-svg``), which a headless browser can check.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Table", "LinePlot", "Heatmap", "Section", "write_html", "format_cell"]

MISSING = "—"  # shown for NaN / None / pd.NA
HEATMAP_TEXT_MAX_CELLS = 400  # write values into heatmap cells only when there are few of them
COLORWAY = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#7f7f7f",
]
HLINE_COLORS = ["#444444", "#888888", "#aa7733", "#337799"]
# no plotly logo, and no "Share chart" button (it would upload the data to Plotly Cloud)
PLOT_CONFIG = {
    "responsive": True,
    "displaylogo": False,
    "modeBarButtonsToRemove": ["sendChartToCloud", "sendDataToCloud", "lasso2d", "select2d"],
}


@dataclass
class Table:
    """A DataFrame rendered as an HTML table (floats to 4 significant digits, NaN as "—")."""

    title: str
    frame: pd.DataFrame
    note: str = ""  # a paragraph under the title (plain text, escaped)


@dataclass
class LinePlot:
    """An interactive line plot with asymmetric 95% error bars.

    ``frame`` has columns ``series`` (str), ``x``, ``y``, ``lo``, ``hi`` (floats; ``lo``/``hi``
    are the interval's bounds, NaN where unknown, e.g. a single seed). ``hlines`` are dashed
    horizontal reference lines, e.g. ``{"dense": 0.85, "majority class": 0.5}``.
    """

    title: str
    frame: pd.DataFrame
    x_label: str
    y_label: str
    hlines: dict[str, float] = field(default_factory=dict)


@dataclass
class Heatmap:
    """A heatmap of ``z`` (rows x columns, NaN allowed) with column labels ``x``, row labels ``y``."""

    title: str
    z: list[list[float]]
    x: list[str]
    y: list[str]
    colorbar: str = ""


@dataclass
class Section:
    """A titled part of the page; a ``str`` item is a paragraph (escaped)."""

    title: str
    items: list[Table | LinePlot | Heatmap | str]


# ---------------------------------------------------------------------------------------------
# Cells and tables


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return bool(isinstance(value, numbers.Real) and math.isnan(value))
    except (TypeError, ValueError):
        return False


def format_cell(value: Any) -> str:
    """One table cell as escaped HTML text: floats to 4 significant digits, NaN as "—"."""
    if _is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return html.escape(str(bool(value)))
    if isinstance(value, numbers.Integral):
        return html.escape(str(int(value)))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return html.escape(f"{value:.4g}")
    return html.escape(str(value))


def _label(name: Any) -> str:
    """A column or index name; MultiIndex tuples are joined."""
    if isinstance(name, tuple):
        return " / ".join(str(p) for p in name if not _is_missing(p) and str(p) != "")
    return "" if name is None else str(name)


def _table_html(table: Table) -> str:
    frame = table.frame
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(
            f"Table {table.title!r}: frame must be a pandas DataFrame, not {type(frame).__name__}"
        )
    # a meaningful index (named, a MultiIndex, or anything but 0..n-1) becomes leading columns
    default_index = (
        isinstance(frame.index, pd.RangeIndex)
        and frame.index.name is None
        and (frame.index.start == 0 and frame.index.step == 1)
    )
    if not default_index:
        names = [n if n is not None else "" for n in frame.index.names]
        frame = frame.copy()
        frame.index = frame.index.set_names(
            [n or ("index" if len(names) == 1 else f"level {i}") for i, n in enumerate(names)]
        )
        frame = frame.reset_index()
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        if not isinstance(frame[c], pd.DataFrame)
        else False
        for c in frame.columns
    ]
    head = "".join(
        f'<th class="{"num" if num else "txt"}">{html.escape(_label(c))}</th>'
        for c, num in zip(frame.columns, numeric, strict=True)
    )
    rows = []
    for values in frame.itertuples(index=False, name=None):
        cells = "".join(
            f'<td class="{"num" if num else "txt"}">{format_cell(v)}</td>'
            for v, num in zip(values, numeric, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    body = (
        "\n".join(rows)
        if rows
        else (f'<tr><td class="empty" colspan="{max(len(frame.columns), 1)}">(no rows)</td></tr>')
    )
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (
        f'<div class="dc-table"><h3>{html.escape(table.title)}</h3>{note}\n'
        f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
        f"</tbody></table></div></div>"
    )


# ---------------------------------------------------------------------------------------------
# Plots


def _floats(values: Any) -> list[float | None]:
    """Plain floats for plotly's JSON, with None (null) for NaN / inf / missing."""
    out: list[float | None] = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) else None)
    return out


def _text(value: Any) -> str:
    """Text for plotly (labels, legend): it reads a few HTML tags and entities, so <, >, & are
    escaped; quotes are left alone since plotly does not decode &quot;."""
    return html.escape(str(value), quote=False)


def _layout(height: int, x_label: str, y_label: str) -> dict:
    axis = dict(
        showgrid=True,
        gridcolor="#e5e5e5",
        zeroline=False,
        linecolor="#888",
        ticks="outside",
        tickcolor="#888",
        automargin=True,
        showline=True,
    )
    return dict(
        template="none",
        height=height,
        margin=dict(l=60, r=30, t=20, b=50),
        paper_bgcolor="white",
        plot_bgcolor="white",
        font=dict(
            family="system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif",
            size=13,
            color="#222",
        ),
        colorway=COLORWAY,
        hovermode="closest",
        xaxis=dict(axis, title=dict(text=_text(x_label))),
        yaxis=dict(axis, title=dict(text=_text(y_label))),
        legend=dict(bgcolor="rgba(255,255,255,0.8)", bordercolor="#ddd", borderwidth=1),
    )


def _line_figure(plot: LinePlot):
    import plotly.graph_objects as go

    frame = plot.frame
    missing = {"series", "x", "y"} - set(frame.columns)
    if missing:
        raise ValueError(f"LinePlot {plot.title!r}: frame lacks columns {sorted(missing)}")
    fig = go.Figure(layout=_layout(440, plot.x_label, plot.y_label))
    xs = pd.to_numeric(frame["x"], errors="coerce")
    names = frame["series"].astype(str)
    for name in pd.unique(names):
        part = frame[names == name].assign(_x=xs).sort_values("_x", kind="stable")
        y = pd.to_numeric(part["y"], errors="coerce").to_numpy(dtype=float)
        nan = y * math.nan
        lo = (
            pd.to_numeric(part["lo"], errors="coerce").to_numpy(dtype=float)
            if "lo" in part
            else nan
        )
        hi = (
            pd.to_numeric(part["hi"], errors="coerce").to_numpy(dtype=float)
            if "hi" in part
            else nan
        )
        plus, minus = hi - y, y - lo  # NaN where a bound or y is unknown: no bar on that side
        ci = [
            ""
            if _is_missing(a) and _is_missing(b)
            else f"<br>95% CI [{format_cell(a)}, {format_cell(b)}]"
            for a, b in zip(lo, hi, strict=True)
        ]
        fig.add_trace(
            go.Scatter(
                name=_text(name),
                x=_floats(part["_x"]),
                y=_floats(y),
                mode="lines+markers",
                marker=dict(size=7),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=_floats(plus),
                    arrayminus=_floats(minus),
                    thickness=1.2,
                    width=4,
                ),
                text=ci,
                hovertemplate="%{fullData.name}<br>x=%{x}<br>y=%{y:.4~g}%{text}<extra></extra>",
            )
        )
    finite = [v for v in _floats(xs) if v is not None]
    x0, x1 = (min(finite), max(finite)) if finite else (0.0, 1.0)
    for i, (name, value) in enumerate(plot.hlines.items()):
        if _is_missing(value):
            continue
        fig.add_trace(
            go.Scatter(
                name=_text(name),
                x=[x0, x1],
                y=[float(value), float(value)],
                mode="lines",
                line=dict(dash="dash", width=1.5, color=HLINE_COLORS[i % len(HLINE_COLORS)]),
                hovertemplate="%{fullData.name}: %{y:.4~g}<extra></extra>",
            )
        )
    return fig


def _heatmap_figure(plot: Heatmap):
    import plotly.graph_objects as go

    z = [_floats(row) for row in plot.z]
    if len(z) != len(plot.y) or any(len(row) != len(plot.x) for row in z):
        raise ValueError(
            f"Heatmap {plot.title!r}: z is {len(z)} rows x {[len(r) for r in z]} columns, "
            f"labels are {len(plot.y)} rows x {len(plot.x)} columns"
        )
    # categorical labels (stringified so that "1", "2" are not turned into a numeric axis)
    x = [_text(v) for v in plot.x]
    y = [_text(v) for v in plot.y]
    height = max(300, min(1200, 140 + 28 * len(y)))
    layout = _layout(height, "", "")
    layout["xaxis"].update(type="category", showgrid=False, ticks="")
    layout["yaxis"].update(type="category", showgrid=False, ticks="", autorange="reversed")
    trace = dict(
        z=z,
        x=x,
        y=y,
        colorscale="Viridis",
        hoverongaps=False,
        colorbar=dict(title=dict(text=_text(plot.colorbar))),
        hovertemplate="%{y} · %{x}: %{z:.4~g}<extra></extra>",
    )
    if len(x) * len(y) <= HEATMAP_TEXT_MAX_CELLS:
        trace.update(texttemplate="%{z:.3~g}", textfont=dict(size=13))
    return go.Figure(go.Heatmap(**trace), layout=layout)


def _plot_html(plot: LinePlot | Heatmap, index: int) -> str:
    fig = _line_figure(plot) if isinstance(plot, LinePlot) else _heatmap_figure(plot)
    div_id = f"dc-plot-{index}"
    inner = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        default_width="100%",
        default_height=f"{fig.layout.height}px",
        config=PLOT_CONFIG,
    )
    return (
        f'<div class="dc-figure"><h3>{html.escape(plot.title)}</h3>\n'
        f'<div class="dc-plot" id="{div_id}-box">{inner}</div></div>'
    )


# ---------------------------------------------------------------------------------------------
# The page

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #222; background: #fafafa; margin: 0; line-height: 1.5; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; background: #fff;
       min-height: 100vh; box-shadow: 0 0 6px rgba(0,0,0,.06); }
h1 { font-size: 1.7rem; margin: .5rem 0 1rem; }
h2 { font-size: 1.3rem; margin: 2.5rem 0 .8rem; padding-bottom: .3rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
p { margin: .5rem 0; }
p.note { color: #555; font-size: .92rem; margin-top: 0; }
nav ul { padding-left: 1.2rem; margin: .3rem 0; }
nav a, nav a:visited { color: #1f5fa8; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .9rem; margin: .3rem 0 1rem; }
th, td { padding: .28rem .7rem; border-bottom: 1px solid #e4e4e4; }
th { background: #f2f4f7; border-bottom: 2px solid #ccc; text-align: left; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.txt { text-align: left; }
td.empty { color: #888; font-style: italic; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef4fb; }
.dc-plot { width: 100%; margin: .2rem 0 1rem; }
#dc-status { display: none; white-space: pre-wrap; }
#dc-status.dc-bad { display: block; background: #fdecea; color: #8a1c1c; border: 1px solid #e0b4b4;
                    padding: .6rem .8rem; margin-top: 2rem; font-size: .85rem; }
#dc-status.dc-bad::before { content: "Some plots did not render or a script failed: "; font-weight: bold; }
footer { color: #888; font-size: .8rem; margin-top: 3rem; }
"""

# Registered first in <head>, before plotly, so that every error is caught.
STATUS_JS = """
(function () {
  var expected = %(expected)d;
  var errors = [];
  var loaded = false;
  function text(x) { try { return String(x && x.message ? x.message : x); } catch (e) { return "?"; } }
  function rendered() {
    var n = 0;
    document.querySelectorAll(".dc-plot").forEach(function (d) { if (d.querySelector(".main-svg")) n++; });
    return n;
  }
  function write() {
    var el = document.getElementById("dc-status");
    if (!el) return;
    var s = {errors: errors.slice(), plots: expected, rendered: rendered()};
    el.textContent = JSON.stringify(s);
    el.className = (s.errors.length || s.rendered !== s.plots) ? "dc-bad" : "dc-ok";
  }
  window.addEventListener("error", function (e) {
    if (e instanceof ErrorEvent) {
      errors.push(text(e.message || e.error) + (e.filename ? " (" + e.filename + ":" + e.lineno + ")" : ""));
    } else if (e.target && e.target !== window) {  // a resource (script, link, img) failed to load
      var t = e.target;
      errors.push("failed to load <" + (t.tagName || "?").toLowerCase() + "> " + (t.src || t.href || ""));
    } else {
      errors.push("error event");
    }
    if (loaded) write();
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    errors.push("unhandled rejection: " + text(e.reason));
    if (loaded) write();
  });
  window.addEventListener("load", function () {
    loaded = true;
    var tries = 0;
    (function tick() {  // plotly may finish drawing after load: look again for up to ~5 s
      write();
      if (rendered() < expected && tries++ < 50) setTimeout(tick, 100);
    })();
  });
})();
"""


def _item_html(item: Any, counter: list[int]) -> str:
    if isinstance(item, str):
        return f"<p>{html.escape(item)}</p>"
    if isinstance(item, Table):
        return _table_html(item)
    if isinstance(item, (LinePlot, Heatmap)):
        counter[0] += 1
        return _plot_html(item, counter[0])
    raise TypeError(
        f"a section item must be a Table, LinePlot, Heatmap or str, not {type(item).__name__}"
    )


def render_html(title: str, sections: list[Section], intro: str = "") -> str:
    """The whole page as a string (see :func:`write_html`)."""
    from plotly.offline import get_plotlyjs

    counter = [0]
    parts, toc = [], []
    for i, section in enumerate(sections, 1):
        if not isinstance(section, Section):
            raise TypeError(f"sections must be Section objects, not {type(section).__name__}")
        anchor = f"s{i}"
        toc.append(f'<li><a href="#{anchor}">{html.escape(section.title)}</a></li>')
        body = "\n".join(_item_html(item, counter) for item in section.items)
        parts.append(
            f'<section id="{anchor}"><h2>{html.escape(section.title)}</h2>\n{body}\n</section>'
        )
    n_plots = counter[0]
    plotly_js = ""
    if n_plots:
        js = get_plotlyjs()
        if "</script" in js.lower():  # never seen, but it would end the <script> element early
            js = js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
        plotly_js = f"<script>{js}</script>"
    intro_html = f'<p class="intro">{html.escape(intro)}</p>' if intro else ""
    nav = (
        f"<nav><strong>Contents</strong><ul>{''.join(toc)}</ul></nav>" if len(sections) > 1 else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
<script>{STATUS_JS % {"expected": n_plots}}</script>
{plotly_js}
</head>
<body>
<main>
<h1>{html.escape(title)}</h1>
{intro_html}
{nav}
{chr(10).join(parts)}
<pre id="dc-status">{html.escape(json.dumps({"errors": ["page did not finish loading"], "plots": n_plots, "rendered": 0}))}</pre>
<footer>Generated by DeepCuts. Self-contained: opens offline.</footer>
</main>
</body>
</html>
"""


def write_html(path: str | Path, title: str, sections: list[Section], intro: str = "") -> Path:
    """Write the page to ``path`` atomically and return the path.

    The page is rendered in memory first, then written to a temp file next to ``path`` that
    replaces it only once complete, so a crash leaves the previous file (or none), never half.
    """
    path = Path(path)
    page = render_html(title, sections, intro)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
