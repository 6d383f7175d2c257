"""`genlab compare`: runs side by side as a self-contained HTML dashboard, or Markdown / CSV / JSON.

The HTML needs no network: CSS and the sorting script are inline and every image (training
curves drawn with matplotlib, the latest sample grid of each run, diagnostics plots) is a base64
data URI. Everything that comes from a run directory is escaped (html.escape for markup; JSON inside
<script> has <, >, & written as \\u escapes), so a run called `<b>&"'` is shown, never interpreted.

Rows are split into comparability groups (see runs_table): sorting and "best" highlighting never
cross a group boundary, so FIDs computed on other features or at another n are not ranked together.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from .runs_table import Column, Table, build_table, find_runs, row_order

FORMATS = ("html", "md", "csv", "json")


# ------------------------------------------------------------------------------ entry point
def compare(patterns: Iterable[str | Path], out: str | Path | None = None, fmt: str = "html",
            sort: str | None = None) -> tuple[str, Table]:
    """Collect runs, build the table and render it; writes `out` when given. Returns (text, table)."""
    if fmt not in FORMATS:
        from ..errors import GenlabError

        raise GenlabError(f"unknown --format {fmt!r} (choose from: {', '.join(FORMATS)})")
    run_dirs, warnings = find_runs(patterns)
    if not run_dirs:
        from ..errors import RunError

        raise RunError("no genlab run directories found in: " + " ".join(map(str, patterns))
                       + "".join(f"; {w}" for w in warnings))
    table = build_table(run_dirs, sort=sort, warnings=warnings)
    text = {"html": to_html, "md": to_markdown, "csv": to_csv, "json": to_json}[fmt](table)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
    return text, table


# ------------------------------------------------------------------------------ cell formatting
def fmt_value(v: Any, col: Column) -> str:
    """What a person reads (4 significant digits); exact values live in CSV / JSON / data-value."""
    if v is None:
        return ""
    if isinstance(v, bool) or col.kind == "text" or not isinstance(v, (int, float)):
        return str(v)
    if col.kind == "duration":
        return _duration(float(v))
    if col.kind == "int" and float(v).is_integer():
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    return format(v, ".4g")


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return str(s)
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _header(col: Column) -> str:
    return col.label + {"lower": " ↓", "higher": " ↑"}.get(col.better or "", "")


# ------------------------------------------------------------------------------ CSV / JSON / Markdown
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A cell a spreadsheet will not run as a formula (OWASP's rule: text starting with = + - @ tab
    or CR gets a leading apostrophe); numbers stay numbers, so -1.5 is written as -1.5."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([csv_safe(v) for v in ["group"] + [c.key for c in table.columns] + ["best", "path"]])
    for i in row_order(table):
        best = sorted(table.group_of(i).best.get(i, ()))
        row = [table.group_of(i).id] + ["" if table.value(i, c.key) is None else table.value(i, c.key)
                                        for c in table.columns] + [" ".join(best), str(table.runs[i].path)]
        w.writerow([csv_safe(v) for v in row])
    return buf.getvalue()


def table_dict(table: Table) -> dict:
    return {
        "columns": [{"key": c.key, "label": c.label, "better": c.better, "section": c.section}
                    for c in table.columns],
        "groups": [{"id": g.id, "label": g.label, "differs_from_A": g.differs,
                    "runs": [table.runs[i].name for i in g.rows]} for g in table.groups],
        "runs": [{"name": table.runs[i].name, "path": str(table.runs[i].path), "group": table.group_of(i).id,
                  "values": {c.key: _json_value(table.value(i, c.key)) for c in table.columns},
                  "best": sorted(table.group_of(i).best.get(i, ()))} for i in row_order(table)],
        "warnings": list(table.warnings),
    }


def to_json(table: Table) -> str:
    return json.dumps(table_dict(table), indent=2, allow_nan=False) + "\n"


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"})


def _md(text: str) -> str:
    return text.replace("\n", " ").translate(_MD_SPECIAL)


def to_markdown(table: Table) -> str:
    lines = ["| " + " | ".join(["group"] + [_md(_header(c)) for c in table.columns]) + " |",
             "|" + "|".join(["---"] + ["---:" if c.kind != "text" else "---" for c in table.columns]) + "|"]
    for i in row_order(table):
        cells = [table.group_of(i).id]
        for c in table.columns:
            s = _md(fmt_value(table.value(i, c.key), c))
            cells.append(f"**{s}**" if s and table.is_best(i, c.key) else s)
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["", "Best value per comparability group in **bold** (↓ lower is better, ↑ higher is better)."]
    if len(table.groups) > 1:
        notes.append("Groups are NOT comparable with each other (different data, features, reference or n):")
        notes += [f"- **{g.id}**: {_md(g.label)}" + (f" (differs from A in: {', '.join(g.differs)})"
                                                      if g.differs else "") for g in table.groups]
    return "\n".join(lines + notes) + "\n"


# ------------------------------------------------------------------------------ HTML
def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _script_json(obj: Any) -> str:
    """JSON safe to place inside <script>: no '</script>', '<!--' or ']]>' can appear in it."""
    text = json.dumps(obj, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sort_value(v: Any) -> str:
    """Exact value for the sorting script (parseFloat reads repr(float) and Infinity, not inf)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return ("Infinity" if v > 0 else "-Infinity") if math.isinf(v) else repr(v)
    return str(v)


def _cell(table: Table, i: int, col: Column) -> str:
    e = html.escape
    v = table.value(i, col.key)
    classes = ["num"] if col.kind != "text" else []
    attrs = f' data-value="{e(_sort_value(v))}"'
    if v is None:
        classes.append("blank")
    if table.is_best(i, col.key):
        classes.append("best")
        attrs += ' title="best in group"'
    elif col.key == "fingerprint" and v is not None:
        attrs += f' title="{e(str(v))}"'
    elif col.key == "steps" and table.runs[i].values.get("planned_steps") is not None:
        attrs += f' title="of {e(str(table.runs[i].values["planned_steps"]))} planned"'
    text = fmt_value(v, col)
    if col.key == "fingerprint" and v is not None:
        text = str(v)[:12]
    cls = f' class="{" ".join(classes)}"' if classes else ""
    tag = "th scope=\"row\"" if col.key == "run" else "td"
    return f"<{tag}{cls}{attrs}>{e(text)}</{tag.split()[0]}>"


def _table_html(table: Table) -> str:
    e = html.escape
    multi = len(table.groups) > 1
    head = "".join(f'<th data-key="{e(c.key)}" data-kind="{c.kind}" data-better="{c.better or ""}" '
                   f'class="{c.section}" tabindex="0" title="click to sort">{e(_header(c))}</th>'
                   for c in table.columns)
    bodies = []
    for g in table.groups:
        rows = []
        if multi:
            flag = (f' <span class="flag">&#9888; not comparable with group A (differs in: '
                    f'{e(", ".join(g.differs))})</span>') if g.differs else ""
            rows.append(f'<tr class="group-head"><th colspan="{len(table.columns)}">Group {e(g.id)}: '
                        f'{e(g.label)}{flag}</th></tr>')
        for i in g.rows:
            cls = ' class="incomparable"' if g.differs else ""
            rows.append(f"<tr{cls}>" + "".join(_cell(table, i, c) for c in table.columns) + "</tr>")
        bodies.append(f'<tbody data-group="{e(g.id)}">' + "\n".join(rows) + "</tbody>")
    return (f'<table id="metrics"><thead><tr>{head}</tr></thead>\n' + "\n".join(bodies) + "</table>")


# Sample grids are shown at least this wide, enlarged by a whole factor without blur: an 8 x 8 grid
# of 28 px digits (242 px) is drawn at 3x, each digit 84 px on screen.
SAMPLE_WIDTH = 640


def _figure(img: bytes | Path, caption: str, alt: str, min_width: int = 0) -> str:
    """An embedded PNG; pictures narrower than min_width are enlarged by a whole factor, pixelated."""
    data = img.read_bytes() if isinstance(img, Path) else img
    width = int.from_bytes(data[16:20], "big") if data[:8] == b"\x89PNG\r\n\x1a\n" else 0
    scale = -(-min_width // width) if 0 < width < min_width else 1
    style = (f' class="enlarged" style="width:{width * scale}px;image-rendering:pixelated"'
             if scale > 1 else "")
    return (f'<figure><img src="{_data_uri(data)}" alt="{html.escape(alt)}"{style}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def to_html(table: Table, curves: bool = True) -> str:
    from .curves import curves_png, fid_inf_png

    e = html.escape
    names = [r.name for r in table.runs]
    parts = [f"<h1>genlab compare</h1><p class=\"meta\">{len(table.runs)} runs &middot; generated "
             f"{e(datetime.now().strftime('%Y-%m-%d %H:%M'))}</p>"]
    if table.warnings:
        parts.append('<ul class="warnings">' + "".join(f"<li>{e(w)}</li>" for w in table.warnings) + "</ul>")
    group_note = ("" if len(table.groups) == 1 else
                  f" Rows are split into {len(table.groups)} comparability groups (same data, features, "
                  "reference and sample counts); numbers in different groups must not be compared.")
    parts.append(f"<section><h2>Metrics</h2><p class=\"note\">&darr; lower is better, &uarr; higher is better; "
                 f"the best value in each group is highlighted. Click a column header to sort.{e(group_note)}</p>"
                 f'<div class="scroll">{_table_html(table)}</div></section>')
    png = curves_png([(r.name, r.history) for r in table.runs]) if curves else None
    if png is not None:
        parts.append("<section><h2>Training curves</h2>" + _figure(png, "one colour per run, shared axes",
                                                                    "training curves of " + ", ".join(names))
                     + "</section>")
    fits = fid_inf_png([(r.name, *r.fid_inf_fit) for r in table.runs if r.fid_inf_fit]) if curves else None
    if fits is not None:
        parts.append("<section><h2>FID-infinity</h2>" + _figure(
            fits, "FID of n-sample subsets against 1/n and the least-squares line to 1/n = 0 (Chong & Forsyth 2020)",
            "FID-infinity fits") + "</section>")
    samples = [_figure(r.sample, f"{r.name} (step {r.sample_step})", f"samples of {r.name}", min_width=SAMPLE_WIDTH)
               for r in table.runs if r.sample is not None]
    if samples:
        parts.append('<section><h2>Latest samples</h2><div class="cards">' + "".join(samples) + "</div></section>")
    plots = [_figure(p, f"{r.name}: {p.stem}", f"{p.stem} of {r.name}") for r in table.runs for p in r.plots]
    if plots:
        parts.append('<section><h2>Mode-collapse diagnostics</h2><div class="cards plots">' + "".join(plots)
                     + "</div></section>")
    parts.append("<section><h2>Run directories</h2><ul>" + "".join(
        f"<li><b>{e(r.name)}</b>: <code>{e(str(r.path))}</code></li>" for r in table.runs) + "</ul></section>")
    data = _script_json(table_dict(table))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>genlab compare: {e(', '.join(names)[:200])}</title><style>{_CSS}</style></head>\n"
            f"<body>\n" + "\n".join(parts) +
            f'\n<script type="application/json" id="genlab-data">{data}</script>\n<script>{_JS}</script>\n'
            f"</body></html>\n")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{margin:0 0 4px;font-size:22px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.meta,.note{color:#5a6373;margin:4px 0 10px}.warnings{color:#8a5300;background:#fff6e0;padding:8px 8px 8px 28px}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-variant-numeric:tabular-nums;white-space:nowrap}
th,td{padding:4px 9px;border-bottom:1px solid #e6e9ef;text-align:left}td.num{text-align:right}
thead th{position:sticky;top:0;background:#f1f4f9;cursor:pointer;user-select:none;border-bottom:2px solid #c7cfdb}
thead th.eval{background:#eaf1fb}thead th.diag{background:#f3eefa}
thead th[aria-sort=ascending]::after{content:" \\25B2";font-size:10px}
thead th[aria-sort=descending]::after{content:" \\25BC";font-size:10px}
tbody th{font-weight:600}td.best{background:#d4f5dc;font-weight:700;color:#0b5b22}
tr.group-head th{background:#fafbfd;color:#334;font-weight:600;padding-top:10px;cursor:default}
.flag{color:#b3261e;margin-left:8px}tr.incomparable td,tr.incomparable th{color:#55504a}
.cards{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:0;padding:8px;border:1px solid #e1e5ec;border-radius:6px;background:#fbfcfe}
.cards img{display:block;max-width:420px}.cards img.enlarged{max-width:none}section>figure img{max-width:100%}
figcaption{font-size:12px;color:#4a5262;margin-top:4px;max-width:420px;overflow-wrap:anywhere}
code{font-size:12px}
"""

# Sorting stays inside each <tbody> (one comparability group); blanks always sort last.
_JS = """
(function () {
  "use strict";
  var table = document.getElementById("metrics");
  var data = JSON.parse(document.getElementById("genlab-data").textContent);
  var heads = table.tHead.rows[0].cells;
  function val(row, i) {
    var v = row.cells[i].getAttribute("data-value");
    return v === null ? "" : v;
  }
  function sortBy(i) {
    var th = heads[i], kind = th.getAttribute("data-kind");
    var cur = th.getAttribute("aria-sort");
    var dir = cur ? (cur === "ascending" ? "descending" : "ascending")
                  : (th.getAttribute("data-better") === "higher" ? "descending" : "ascending");
    for (var h = 0; h < heads.length; h++) heads[h].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir);
    var sign = dir === "ascending" ? 1 : -1;
    Array.prototype.forEach.call(table.tBodies, function (body) {
      var rows = Array.prototype.filter.call(body.rows, function (r) {
        return !r.classList.contains("group-head");
      });
      rows.sort(function (a, b) {
        var x = val(a, i), y = val(b, i);
        if (kind !== "text") { x = parseFloat(x); y = parseFloat(y); }
        var bx = kind === "text" ? x === "" : isNaN(x), by = kind === "text" ? y === "" : isNaN(y);
        if (bx || by) return bx === by ? 0 : (bx ? 1 : -1);
        if (kind === "text") return sign * x.localeCompare(y);
        return sign * (x - y);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  }
  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () { sortBy(i); });
    th.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(i); }
    });
  });
  // report.html#sort=fid (or #sort=fid:desc) opens the report already sorted: shareable views.
  var m = /sort=([^:&]+)(?::(asc|desc))?/.exec(decodeURIComponent(location.hash || ""));
  if (m) {
    Array.prototype.forEach.call(heads, function (th, i) {
      if (th.getAttribute("data-key") !== m[1]) return;
      if (m[2]) th.setAttribute("aria-sort", m[2] === "asc" ? "descending" : "ascending");
      sortBy(i);
    });
  }
  table.setAttribute("data-runs", String(data.runs.length));
  // for the real-browser test: how many embedded pictures decoded (all of them, once loaded)
  window.addEventListener("load", function () {
    var imgs = document.images, ok = 0;
    for (var j = 0; j < imgs.length; j++) if (imgs[j].complete && imgs[j].naturalWidth > 0) ok++;
    document.documentElement.setAttribute("data-images", imgs.length + "/" + ok);
  });
  document.documentElement.setAttribute("data-genlab-ready", "1");
})();
"""
