"""Reading result folders and writing their tables and figures: shared by evaluate.py and benchmark.py."""
import json
import os

import numpy as np

ATTACKS = ["cce", "unlearndiff", "p4d-n", "p4d-k", "ringabell", "ringabell-continuous"]  # attack.py's, table order
GRID_COLS = 8  # pictures per row of an evaluation's concept_grid.png and other_grid.png


def attack_summary(folder):
    """(attack name, its ASR, pre-attack rate, target count and cost) from an attack.py output folder."""
    am = json.load(open(os.path.join(folder, "metrics.json")))
    return am["attack"], {k: am[k] for k in ("asr", "pre_asr", "n_targets", "cost")}


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def mean_sd(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)


def fmt_ms(pair, digits=3):
    m, s = pair
    return "-" if m is None else f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def report_table(rows, attacks=None):
    """Markdown table: one row per evaluated model (attack columns: those any row has, in ATTACKS order)."""
    if attacks is None:
        seen = {x for m in rows for x in m.get("attacks", {})}
        attacks = [x for x in ATTACKS if x in seen] + sorted(seen - set(ATTACKS))
    head = ["model", "concept rate", "implicit rate", "preservation", "Frechet dist."] + \
           [f"ASR {x} (pre)" for x in attacks] + ["erase s", "erase UNet evals"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in rows:
        cost = m.get("erase_cost") or {}
        cells = [m.get("label") or m.get("weights") or "base", fmt(m["concept_rate"]), fmt(m.get("implicit_rate")),
                 fmt(m.get("preservation")),
                 fmt(m.get("frechet_distance"), 2)]
        for x in attacks:
            at = m.get("attacks", {}).get(x)
            cells.append(f"{at['asr']:.3f} ({at['pre_asr']:.3f})" if at else "-")
        cells += [fmt(cost.get("seconds"), 0), fmt(cost.get("unet_evals"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scatter_png(points, path, xlabel, ylabel, size=560):
    """A small labelled scatter plot drawn with PIL (points: (label, x, y) with x, y in [0, 1]). The x axis starts
    just below the lowest x (preservation values crowd near 1); labels that would overlap are stacked."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    left, top, right, bottom = 60, 24, size - 20, size - 50
    x_lo = max(0.0, np.floor((min([x for _, x, _ in points] + [1.0]) - 0.02) * 20) / 20)
    x_lo = min(x_lo, 0.9)

    def to_px(x, y):
        return left + (x - x_lo) / (1 - x_lo) * (right - left), bottom - y * (bottom - top)

    d.rectangle([left, top, right, bottom], outline="black")
    for k in range(6):
        vx, vy = x_lo + (1 - x_lo) * k / 5, k / 5
        x, y = to_px(vx, vy)
        d.line([x, bottom, x, bottom + 4], fill="black")
        d.text((x - 10, bottom + 6), f"{vx:.2f}", fill="black")
        d.line([left - 4, y, left, y], fill="black")
        d.text((left - 30, y - 5), f"{vy:.1f}", fill="black")
    d.text(((left + right) // 2 - 3 * len(xlabel), size - 22), xlabel, fill="black")
    d.text((4, 6), ylabel, fill="black")
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    placed = []  # label boxes already drawn
    for i, (label, x, y) in enumerate(points):
        px, py = to_px(x, y)
        c = colours[i % len(colours)]
        d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=c)
        w = d.textlength(label)
        tx = px + 8 if px + 8 + w < size - 4 else px - 8 - w  # left of the point near the right edge
        ty = py - 6
        while any(abs(ty - oy) < 12 and tx < ox + ow and ox < tx + w for ox, oy, ow in placed):
            ty += 12
        placed.append((tx, ty, w))
        d.text((tx, ty), label, fill=c)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
