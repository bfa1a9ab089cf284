"""A strip + box plot of dead air per strategy, written as SVG by hand (no plotting library).

One panel per group of transitions, one row per strategy: every transition is a dot (a random
sample of at most MAX_DOTS per row, jittered vertically), the box spans p25-p75 with the median,
whiskers p5-p95, a diamond marks the mean. Values past the axis are drawn as a triangle at the
right edge with their count.
"""

from __future__ import annotations

import html
import random
from collections.abc import Sequence

import numpy as np

MAX_DOTS = 250
COLORS = ["#c0392b", "#d35400", "#b7950b", "#7d3c98", "#1f618d", "#148f77", "#566573"]


def _nice_ticks(limit: float) -> list[float]:
    step = next(s for s in (0.25, 0.5, 1, 2, 5, 10, 20) if limit / s <= 10)
    return [i * step for i in range(int(limit / step) + 1)]


def svg(panels: Sequence[tuple[str, dict[str, list[float]]]], title: str, x_max: float = 8.0,
        subtitle: str = "") -> str:
    """`panels`: (panel title, {row label: values in seconds}) in display order."""
    label_w, plot_w, right_w, row_h = 300, 520, 170, 30
    width = label_w + plot_w + right_w
    y = 58 if subtitle else 44
    parts: list[str] = []
    rnd = random.Random(0)

    def x_of(v: float) -> float:
        return label_w + min(v, x_max) / x_max * plot_w

    for p_index, (panel_title, rows) in enumerate(panels):
        y += 26
        parts.append(f'<text x="{label_w}" y="{y - 8}" class="panel">{html.escape(panel_title)}</text>')
        top = y
        for tick in _nice_ticks(x_max):
            x = x_of(tick)
            parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + row_h * len(rows)}" class="grid"/>')
        for r_index, (label, values) in enumerate(rows.items()):
            color = COLORS[r_index % len(COLORS)]
            mid = y + row_h / 2
            parts.append(f'<text x="{label_w - 10}" y="{mid + 4:.1f}" class="label">{html.escape(label)}</text>')
            if not values:
                y += row_h
                continue
            arr = np.asarray(values, dtype=float)
            sample = values if len(values) <= MAX_DOTS else rnd.sample(list(values), MAX_DOTS)
            for v in sample:
                if v <= x_max:
                    cy = mid + rnd.uniform(-row_h * 0.32, row_h * 0.32)
                    parts.append(f'<circle cx="{x_of(v):.1f}" cy="{cy:.1f}" r="1.7" fill="{color}" '
                                 f'fill-opacity="0.35"/>')
            p5, p25, p50, p75, p95 = np.percentile(arr, [5, 25, 50, 75, 95])
            h = row_h * 0.5
            parts.append(f'<line x1="{x_of(p5):.1f}" y1="{mid:.1f}" x2="{x_of(p95):.1f}" y2="{mid:.1f}" '
                         f'stroke="{color}" stroke-width="1.2"/>')
            width = max(x_of(p75) - x_of(p25), 1.5)
            parts.append(f'<rect x="{x_of(p25):.1f}" y="{mid - h / 2:.1f}" width="{width:.1f}" '
                         f'height="{h:.1f}" fill="white" fill-opacity="0.5" stroke="{color}" stroke-width="1.4"/>')
            parts.append(f'<line x1="{x_of(p50):.1f}" y1="{mid - h / 2:.1f}" x2="{x_of(p50):.1f}" '
                         f'y2="{mid + h / 2:.1f}" '
                         f'stroke="{color}" stroke-width="2.4"/>')
            mean = float(arr.mean())
            mx = x_of(mean)
            parts.append(f'<path d="M{mx:.1f},{mid - 5:.1f} L{mx + 4:.1f},{mid:.1f} L{mx:.1f},{mid + 5:.1f} '
                         f'L{mx - 4:.1f},{mid:.1f} Z" fill="black"/>')
            over = int((arr > x_max).sum())
            note = f"mean {mean:.2f} s"
            if over:
                xe = label_w + plot_w
                parts.append(f'<path d="M{xe + 2},{mid - 5:.1f} L{xe + 9},{mid:.1f} L{xe + 2},{mid + 5:.1f} Z" '
                             f'fill="{color}"/>')
                note = f"{over} &gt; {x_max:g} s (max {arr.max():.0f} s)"
            parts.append(f'<text x="{label_w + plot_w + 12}" y="{mid + 4:.1f}" class="note">{note}</text>')
            y += row_h
        for tick in _nice_ticks(x_max):
            parts.append(f'<text x="{x_of(tick):.1f}" y="{y + 14}" class="tick">{tick:g}</text>')
        if p_index == len(panels) - 1:
            parts.append(f'<text x="{label_w + plot_w / 2}" y="{y + 32}" class="axis">dead air per transition '
                         f'(seconds): dots = transitions, box = p25-p75 with median, whiskers = p5-p95, '
                         f'diamond = mean</text>')
        y += 22
    height = y + 24
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">',
            '<style>.label{font-size:12px;text-anchor:end;fill:#222}.note{font-size:11px;fill:#444}'
            '.tick{font-size:11px;text-anchor:middle;fill:#555}.axis{font-size:11px;text-anchor:middle;fill:#333}'
            '.panel{font-size:13px;font-weight:bold;fill:#222}.title{font-size:15px;font-weight:bold}'
            '.sub{font-size:11px;fill:#555}.grid{stroke:#e3e3e3;stroke-width:1}</style>',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="12" y="24" class="title">{html.escape(title)}</text>']
    if subtitle:
        head.append(f'<text x="12" y="42" class="sub">{html.escape(subtitle)}</text>')
    return "\n".join(head + parts + ["</svg>"]) + "\n"


def dead_air_svg(report: dict, x_max: float = 8.0) -> str:
    """The dead-air report of benchmarks.dead_air.run as a two-panel plot."""
    between: dict[str, list[float]] = {}
    answer: dict[str, list[float]] = {}
    for key, runs in report["runs"].items():
        name = report["summary"][key]["name"]
        between[name] = [g for r in runs for label, g in r.gaps if not label.startswith("answer")]
        answer[name] = [g for r in runs for label, g in r.gaps if label.startswith("answer")]
    title = "Dead air between turns, per strategy (same seeded scenarios, simulated time)"
    subtitle = (f"{report['scenarios']} scenarios, seeds {report['seeds']}; stalls count as the "
                f"{report['parameters']['patience_s']:g} s of silence before the candidate hangs up; "
                f"transitions cut off by a hang-up are not dots here (see cut-offs in RESULTS.md)")
    return svg([("Between interviewer turns (reply -> ack -> summary -> goodbye), heard transitions only", between),
                ("Candidate's answer -> interviewer's reply", answer)], title, x_max, subtitle)
