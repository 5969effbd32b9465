"""Server-rendered SVG charts (no JS library, no CDN): horizontal bars, stacked bars, grouped bars.

Every chart is a self-contained <svg> string with <title> tooltips and text labels, so it reads the same
in a browser, a screenshot and a saved page. All text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["COLORS", "grouped_bars", "hbars", "stacked_bars"]

COLORS = ("#2f6fdf", "#23a36b", "#f0a020", "#e0504a", "#8a63d2", "#8c96a3")
_LABEL_W, _BAR_H, _GAP, _RIGHT = 190, 22, 10, 140
_FONT = 'font-family="PingFang SC, Microsoft YaHei, Noto Sans CJK SC, sans-serif" font-size="13"'


def _num(value: float) -> str:
    return f"{value:,.1f}".rstrip("0").rstrip(".") if value % 1 else f"{int(value):,}"


def _frame(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
            f'viewBox="0 0 {width} {height}" width="100%" style="max-width:{width}px" {_FONT}>'
            f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def _empty(title: str, width: int) -> str:
    return _frame(width, 44, ['<text x="8" y="28" fill="#8c96a3">本期暂无数据</text>'], title)


def hbars(title: str, rows: Sequence[tuple[str, float, str]], width: int = 760, color: str = COLORS[0],
          marker: tuple[float, str] | None = None) -> str:
    """One bar per (label, value, annotation); `marker` draws a dashed reference line (value, label)."""
    if not rows:
        return _empty(title, width)
    top = max([v for _, v, _ in rows] + ([marker[0]] if marker else []) + [1e-9])
    plot = width - _LABEL_W - _RIGHT
    body: list[str] = []
    for i, (label, value, note) in enumerate(rows):
        y = 8 + i * (_BAR_H + _GAP)
        w = max(1.0, plot * value / top) if value > 0 else 0.0
        body.append(f'<text x="{_LABEL_W - 8}" y="{y + 16}" text-anchor="end">{escape(label[:24])}</text>')
        body.append(f'<rect x="{_LABEL_W}" y="{y}" width="{w:.1f}" height="{_BAR_H}" rx="3" fill="{color}">'
                    f'<title>{escape(label)}: {_num(value)} {escape(note)}</title></rect>')
        body.append(f'<text x="{_LABEL_W + w + 6:.1f}" y="{y + 16}">{_num(value)} '
                    f'<tspan fill="#5b6572">{escape(note)}</tspan></text>')
    height = 16 + len(rows) * (_BAR_H + _GAP)
    if marker:
        x = _LABEL_W + plot * marker[0] / top
        body.append(f'<line x1="{x:.1f}" y1="2" x2="{x:.1f}" y2="{height - 6}" stroke="#e0504a" '
                    f'stroke-dasharray="5,4"/><text x="{x + 4:.1f}" y="{height - 2}" fill="#e0504a">'
                    f'{escape(marker[1])}</text>')
        height += 10
    return _frame(width, height, body, title)


def _legend(series: Sequence[str], y: int) -> list[str]:
    out, x = [], _LABEL_W
    for i, name in enumerate(series):
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{COLORS[i % len(COLORS)]}"/>'
                   f'<text x="{x + 16}" y="{y + 11}">{escape(name)}</text>')
        x += 24 + 14 * len(name)
    return out


def stacked_bars(title: str, series: Sequence[str], rows: Sequence[tuple[str, Sequence[float]]],
                 width: int = 760) -> str:
    """One bar per label, split into the series (e.g. on time / late / overdue / open)."""
    if not rows:
        return _empty(title, width)
    top = max([sum(v) for _, v in rows] + [1e-9])
    plot = width - _LABEL_W - _RIGHT
    body = _legend(series, 4)
    for i, (label, values) in enumerate(rows):
        y = 28 + i * (_BAR_H + _GAP)
        x = float(_LABEL_W)
        body.append(f'<text x="{_LABEL_W - 8}" y="{y + 16}" text-anchor="end">{escape(label[:24])}</text>')
        for j, value in enumerate(values):
            w = plot * value / top
            if w > 0:
                body.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{_BAR_H}" '
                            f'fill="{COLORS[j % len(COLORS)]}"><title>{escape(label)} · {escape(series[j])}: '
                            f'{_num(value)}</title></rect>')
            x += w
        body.append(f'<text x="{x + 6:.1f}" y="{y + 16}">{_num(sum(values))}</text>')
    return _frame(width, 36 + len(rows) * (_BAR_H + _GAP), body, title)


def grouped_bars(title: str, series: Sequence[str], rows: Sequence[tuple[str, Sequence[float], str]],
                 width: int = 760, unit: str = "%") -> str:
    """Per label one thin bar per series (e.g. reply rate and inquiry rate per step/variant)."""
    if not rows:
        return _empty(title, width)
    top = max([max(v) for _, v, _ in rows if v] + [1e-9])
    plot = width - _LABEL_W - _RIGHT
    thin = 12
    block = thin * len(series) + _GAP
    body = _legend(series, 4)
    for i, (label, values, note) in enumerate(rows):
        y = 28 + i * block
        body.append(f'<text x="{_LABEL_W - 8}" y="{y + thin}" text-anchor="end">{escape(label[:24])}</text>')
        for j, value in enumerate(values):
            w = plot * value / top
            yy = y + j * thin
            body.append(f'<rect x="{_LABEL_W}" y="{yy}" width="{max(w, 0):.1f}" height="{thin - 2}" '
                        f'fill="{COLORS[j % len(COLORS)]}"><title>{escape(label)} · {escape(series[j])}: '
                        f'{_num(value)}{unit}</title></rect>'
                        f'<text x="{_LABEL_W + w + 4:.1f}" y="{yy + 10}" font-size="11">{_num(value)}{unit}</text>')
        body.append(f'<text x="{width - 8}" y="{y + thin}" text-anchor="end" fill="#5b6572" font-size="11">'
                    f'{escape(note)}</text>')
    return _frame(width, 36 + len(rows) * block, body, title)
