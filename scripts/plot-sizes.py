#!/usr/bin/env python3
"""Plots scripts/soak-sizes.sh's sizes.csv (and rate.csv beside it) as an SVG
and prints a table: the hot WAL, each agent's branch log and the archive,
in MiB, per sample.  Usage: scripts/plot-sizes.py OUT_DIR [SVG]"""
import csv
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "soak-out"
svg_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(out, "sizes.svg")
samples = {}
for row in csv.DictReader(open(os.path.join(out, "sizes.csv"))):
    t = int(row["elapsed_s"])
    f = row["file"]
    key = "archive (all periods)" if f.startswith("coordinator/archive/") else f.replace("/data.mdb", "")
    cell = samples.setdefault(t, {})
    size, records = int(row["bytes"]), int(row["records"] or 0)
    old = cell.get(key, (0, 0))
    cell[key] = (old[0] + size, old[1] + records) if key.startswith("archive") else (size, records)
rates = {}
rate_file = os.path.join(out, "rate.csv")
if os.path.exists(rate_file):
    for row in csv.DictReader(open(rate_file)):
        if row["interactions_per_s"]:
            rates[int(row["elapsed_s"])] = int(row["interactions_per_s"])
times = sorted(samples)
series = sorted({k for c in samples.values() for k in c}, key=lambda k: (k.startswith("archive"), k))
mib = lambda b: b / 2**20
print("| elapsed s | load /s | " + " | ".join(f"{s} MiB (records)" for s in series) + " |")
print("|---" * (len(series) + 2) + "|")
for t in times:
    cells = []
    for s in series:
        size, rec = samples[t].get(s, (0, 0))
        cells.append(f"{mib(size):.0f} ({rec:,})")
    print(f"| {t} | {rates.get(t, '')} | " + " | ".join(cells) + " |")

W, H, L, B = 760, 360, 70, 40
tmax = max(times) or 1
hot = [s for s in series if not s.startswith("archive")]
ymax = max(mib(samples[t].get(s, (0, 0))[0]) for t in times for s in hot) * 1.15 or 1
colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="20">Data file sizes under steady load (hot files; the archive grows by design)</text>',
         f'<line x1="{L}" y1="{H-B}" x2="{W-20}" y2="{H-B}" stroke="black"/>',
         f'<line x1="{L}" y1="{H-B}" x2="{L}" y2="30" stroke="black"/>',
         f'<text x="{W//2}" y="{H-8}">elapsed seconds (0 .. {tmax})</text>',
         f'<text x="8" y="{H//2}">MiB</text>']
for frac in (0, 0.25, 0.5, 0.75, 1.0):
    y = H - B - frac * (H - B - 30)
    parts.append(f'<text x="{L-45}" y="{y+4:.0f}">{ymax*frac:.0f}</text>')
    parts.append(f'<line x1="{L}" y1="{y:.0f}" x2="{W-20}" y2="{y:.0f}" stroke="#eee"/>')
for i, s in enumerate(hot):
    pts = " ".join(f"{L + (W-20-L) * t / tmax:.1f},{H - B - (H-B-30) * mib(samples[t].get(s, (0, 0))[0]) / ymax:.1f}" for t in times)
    parts.append(f'<polyline fill="none" stroke="{colors[i % 4]}" stroke-width="2" points="{pts}"/>')
    parts.append(f'<text x="{W-200}" y="{50 + 16*i}" fill="{colors[i % 4]}">{s}</text>')
parts.append("</svg>")
open(svg_path, "w").write("\n".join(parts) + "\n")
print(f"\n(plot: {svg_path})", file=sys.stderr)
