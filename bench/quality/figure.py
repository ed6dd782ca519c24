"""The quality table as a picture: for each task the claim is judged on (and each backbone), every
method's score against the parameters it stores per task (log scale), with fine-tuning's score and
the 1-point band the target allows. Plain SVG, written by hand (no plotting library is installed)."""

from __future__ import annotations

import math
from html import escape

from bench.quality import plan as C

#: the tasks drawn: the classification and labelling tasks where some method beats the majority class
FIGURE_TASKS = ("banking77", "brown_pos")
#: colour and marker of each method, in legend order
STYLE = {
    "fine-tuning": ("#444444", "square"),
    "lora": ("#8c564b", "diamond"),
    "prompt-tuning": ("#9467bd", "triangle"),
    "p-tuning-v2": ("#1f77b4", "circle"),
    "p-tuning-v2-mlp": ("#17becf", "circle"),
    "defaults": ("#2ca02c", "star"),
    "mpt-shared": ("#ff7f0e", "triangle"),
    "mpt-per-task": ("#d62728", "diamond"),
}
PANEL_W, PANEL_H = 380, 250
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 34, 40
X_MIN, X_MAX = 1e4, 3e8
TASK_TITLES = {"banking77": "BANKING77 (accuracy)", "brown_pos": "Brown POS (token accuracy)"}


def _marker(shape: str, x: float, y: float, color: str, hollow: bool) -> str:
    fill = "white" if hollow else color
    style = f'fill="{fill}" stroke="{color}" stroke-width="1.6"'
    r = 5.0
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" {style}/>'
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {style}/>'
    if shape == "triangle":
        pts = [(x, y - r * 1.2), (x - r * 1.1, y + r * 0.8), (x + r * 1.1, y + r * 0.8)]
    elif shape == "diamond":
        pts = [(x, y - r * 1.3), (x + r, y), (x, y + r * 1.3), (x - r, y)]
    else:  # star
        pts = [
            (x + (r * 1.4 if i % 2 == 0 else r * 0.6) * math.sin(i * math.pi / 5),
             y - (r * 1.4 if i % 2 == 0 else r * 0.6) * math.cos(i * math.pi / 5))
            for i in range(10)
        ]  # fmt: skip
    return f'<polygon points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}" {style}/>'


def _spread(points: list[tuple[str, dict, float]], gap: float = 9.0) -> list[tuple[str, dict, float]]:
    """Points that would sit on top of each other (x closer than `gap` pixels: methods that store
    about as many parameters) spread sideways around their mean x, in legend order."""
    groups: list[list[tuple[str, dict, float]]] = []
    for p in sorted(points, key=lambda p: p[2]):
        if groups and p[2] - groups[-1][-1][2] < gap:
            groups[-1].append(p)
        else:
            groups.append([p])
    out = []
    for g in groups:
        mid = sum(p[2] for p in g) / len(g)
        g = sorted(g, key=lambda p: list(STYLE).index(p[0]))
        out += [(m, r, mid + (i - (len(g) - 1) / 2) * gap) for i, (m, r, _) in enumerate(g)]
    return out


def _x_label(v: float) -> str:
    return f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"


def _panel(ox: float, oy: float, title: str, recs: dict[str, dict]) -> list[str]:
    """One task on one backbone at (ox, oy): recs by method."""
    w, h = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM
    ft = recs.get("fine-tuning")
    scores = [r["score"] for r in recs.values()] + ([ft["score"] - 1.0] if ft else [])
    lo, hi = math.floor(min(scores) - 0.5), math.ceil(max(scores) + 0.5)
    if hi - lo < 3:
        lo = hi - 3
    step = 1 if hi - lo <= 6 else 2 if hi - lo <= 12 else 5

    def px(v: float) -> float:
        return ox + LEFT + w * (math.log10(v) - math.log10(X_MIN)) / (math.log10(X_MAX) - math.log10(X_MIN))

    def py(s: float) -> float:
        return oy + TOP + h * (hi - s) / (hi - lo)

    out = [
        f'<text x="{ox + LEFT + w / 2:.1f}" y="{oy + 20}" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{ox + LEFT}" y="{oy + TOP}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
    ]
    if ft:
        y0, y1 = py(ft["score"]), py(ft["score"] - 1.0)
        out += [
            f'<rect x="{ox + LEFT}" y="{y0:.1f}" width="{w}" height="{y1 - y0:.1f}" fill="#2ca02c" opacity="0.12"/>',
            f'<line x1="{ox + LEFT}" y1="{y0:.1f}" x2="{ox + LEFT + w}" y2="{y0:.1f}" stroke="#444" '
            'stroke-dasharray="4 3"/>',
            f'<text x="{ox + LEFT + w - 4}" y="{y1 + 11:.1f}" text-anchor="end" font-size="10" fill="#2b7a2b">'
            "within 1 point of fine-tuning</text>",
        ]
    for s in range(lo - lo % step + (step if lo % step else 0), hi + 1, step):
        out += [
            f'<line x1="{ox + LEFT - 4}" y1="{py(s):.1f}" x2="{ox + LEFT}" y2="{py(s):.1f}" stroke="#999"/>',
            f'<text x="{ox + LEFT - 7}" y="{py(s) + 4:.1f}" text-anchor="end" font-size="11">{s}</text>',
        ]
    v = X_MIN
    while v <= X_MAX:
        out += [
            f'<line x1="{px(v):.1f}" y1="{oy + TOP + h}" x2="{px(v):.1f}" y2="{oy + TOP + h + 4}" stroke="#999"/>',
            f'<text x="{px(v):.1f}" y="{oy + TOP + h + 16}" text-anchor="middle" font-size="11">{_x_label(v)}</text>',
        ]
        v *= 10
    out.append(
        f'<text x="{ox + LEFT + w / 2:.1f}" y="{oy + PANEL_H - 6}" text-anchor="middle" font-size="11">'
        "parameters stored per task (log scale)</text>"
    )
    points = [(m, recs[m], px(max(X_MIN, recs[m]["stored_params"]))) for m in STYLE if m in recs]
    for method, r, x in _spread(points):
        color, shape = STYLE[method]
        y = py(r["score"])
        tip = f"{C.METHOD_TABLE_NAMES[method]}: {r['score']:.2f}, {r['stored_params']:,} parameters stored"
        out.append(
            f"<g><title>{escape(tip)}</title>{_marker(shape, x, y, color, bool(r.get('optimizer_legacy')))}</g>"
        )
    return out


def render_svg(groups: dict[str, list[dict]], backbone_names: dict[str, str]) -> str | None:
    """The figure of the runs, grouped by backbone in panel order (report.by_backbone): single-task
    and multi-task rows, no ablations; a record without a stored parameter count is left out. One
    panel per (backbone, task) in FIGURE_TASKS with a fine-tuning run; None when there is none."""
    panels: list[tuple[str, dict[str, dict]]] = []
    for b, records in groups.items():
        for t in FIGURE_TASKS:
            recs = {
                r["method"]: r
                for r in records
                if r["task"] == t and not r.get("variant") and r["method"] in STYLE and r.get("stored_params")
            }
            if "fine-tuning" in recs and len(recs) > 1:
                name = backbone_names.get(b, b)
                panels.append((f"{TASK_TITLES.get(t, t)}, {name}", recs))
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    legend_h = 26 * math.ceil(len(STYLE) / 4) + 22
    width, height = cols * PANEL_W, rows * PANEL_H + legend_h
    body: list[str] = []
    for i, (title, recs) in enumerate(panels):
        body += _panel((i % cols) * PANEL_W, (i // cols) * PANEL_H, title, recs)
    ly = rows * PANEL_H + 14
    for i, (method, (color, shape)) in enumerate(STYLE.items()):
        x, y = 20 + (i % 4) * (width - 20) / 4, ly + 26 * (i // 4)
        body += [
            _marker(shape, x, y, color, False),
            f'<text x="{x + 10:.1f}" y="{y + 4:.1f}" font-size="11">{escape(C.METHOD_TABLE_NAMES[method])}</text>',
        ]
    if any(r.get("optimizer_legacy") for _, recs in panels for r in recs.values()):
        body.append(
            f'<text x="20" y="{height - 6}" font-size="11" fill="#555">hollow marker: trained before the '
            "optimizer fix (the table's †)</text>"
        )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )
