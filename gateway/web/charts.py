"""Server-rendered SVG charts for the dashboard: no script, no library.

Every label that reaches an SVG goes through :func:`markupsafe.escape`
(symbol names and node names are ours, but a chart never trusts that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

COLORS = {"quarantine": "#c77c02", "reject": "#b3261e", "held": "#c77c02",
          "released": "#2e7d32", "deleted": "#6b6b6b", "expired": "#9e9e9e",
          "bar": "#3b5b92"}


def stacked_bars(title: str, labels: Sequence[str], series: Mapping[str, Sequence[int]],
                 width: int = 640, height: int = 220) -> Markup:
    """Columns per label (a day), stacked by series (an action)."""
    left, bottom, top = 36, 36, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    peak = max([*totals, 1])
    step = plot_w / max(len(labels), 1)
    bar = max(step * 0.7, 1)
    parts = [_open(title, width, height)]
    for tick in _ticks(peak):
        y = top + plot_h - plot_h * tick / peak
        parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" '
                     'class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" class="tick" '
                     f'text-anchor="end">{tick}</text>')
    for i, label in enumerate(labels):
        x = left + i * step + (step - bar) / 2
        y = top + plot_h
        for name, values in series.items():
            value = values[i]
            if not value:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS.get(name, COLORS["bar"])}"><title>'
                         f'{escape(label)}: {value} {escape(name)}</title></rect>')
        if len(labels) <= 16 or i % 2 == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 14}" '
                         f'class="tick" text-anchor="middle">{escape(label[-5:])}</text>')
    parts.append(_legend(list(series), left, height - 8))
    parts.append("</svg>")
    return Markup("".join(parts))


def horizontal_bars(title: str, items: Sequence[tuple[str, float]], unit: str = "",
                    width: int = 640, color: str | None = None, digits: int = 0) -> Markup:
    """One bar per item (a symbol and how many messages had it)."""
    row, label_w = 22, 220
    height = max(len(items), 1) * row + 16
    peak = max([v for _, v in items] + [1e-9])
    parts = [_open(title, width, height)]
    if not items:
        parts.append('<text x="8" y="20" class="tick">nothing yet</text>')
    for i, (name, value) in enumerate(items):
        y = 8 + i * row
        w = (width - label_w - 70) * value / peak
        fill = color or COLORS.get(name, COLORS["bar"])
        shown = f"{value:.{digits}f}{unit}"
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" class="label" '
                     f'text-anchor="end">{escape(name)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{max(w, 1):.1f}" height="{row - 6}"'
                     f' fill="{fill}"><title>{escape(name)}: {escape(shown)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 14}" class="tick">'
                     f'{escape(shown)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _open(title: str, width: int, height: int) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
            f'<title>{escape(title)}</title>')


def _legend(names: list[str], x: int, y: int) -> str:
    parts = []
    for name in names:
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" '
                     f'fill="{COLORS.get(name, COLORS["bar"])}"/>'
                     f'<text x="{x + 14}" y="{y}" class="tick">{escape(name)}</text>')
        x += 14 + 8 * len(name) + 16
    return "".join(parts)


def _ticks(peak: int) -> list[int]:
    if peak <= 4:
        return list(range(0, peak + 1))
    step = 1
    for candidate in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        step = candidate
        if peak / candidate <= 5:
            break
    return list(range(0, peak + 1, step))
