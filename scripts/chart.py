#!/usr/bin/env python3
"""Draws the HTTP table of a bench result (markdown) as an SVG bar chart:
requests/s per setup, with p50/p99 written beside each bar. No plotting
library needed: the chart is a few rectangles and labels.

    chart.py RESULT.md OUT.svg
"""
import html
import sys


def http_rows(md):
    rows, in_http = [], False
    for line in md.splitlines():
        if line.startswith("## "):
            in_http = line.startswith("## HTTP")
            continue
        if not in_http or not line.startswith("| ") or line.startswith("| setup") or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        try:
            if len(cells) == 4:  # setup | req/s | p50 | p99
                rows.append((cells[0].replace("`", ""), float(cells[1]), cells[2], cells[3]))
            elif len(cells) == 7:  # setup | min | median | max | p50 | p99 | load
                rows.append((cells[0].replace("`", ""), float(cells[2]), cells[4], cells[5]))
        except ValueError:
            pass
    return rows


def svg(rows):
    bar_h, gap, left, width = 22, 10, 640, 420
    top = 40
    height = top + len(rows) * (bar_h + gap) + 20
    peak = max(r[1] for r in rows) or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 230}" height="{height}" font-family="sans-serif" font-size="12">',
        '<text x="10" y="20" font-size="15" font-weight="bold">requests/s (bar), p50 / p99 ms (label); wrk -c64, median of interleaved rounds</text>',
    ]
    for i, (name, rps, p50, p99) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(1, int(width * rps / peak))
        color = "#2b7bb9" if name.startswith("swarmlet") else "#9aa5b1"
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(name[:100])}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w}" height="{bar_h}" fill="{color}"/>')
        out.append(f'<text x="{left + w + 6}" y="{y + 15}">{rps:,.0f} req/s, {p50} / {p99} ms</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    md = open(sys.argv[1], encoding="utf-8").read()
    rows = http_rows(md)
    if not rows:
        sys.exit("chart.py: no HTTP rows in " + sys.argv[1])
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        f.write(svg(rows))


if __name__ == "__main__":
    main()
