#!/usr/bin/env python3
"""Compares slide predictions side by side: WSInfer's and idc's patch CSVs for the same slides
(.ci/bench-slide runs both). Run with the WSInfer venv's python (pandas, numpy, scipy):

    slide_compare.py --run SLIDE TOOL PATCHES.csv TIME.txt [--run ...] [--truth SLIDE TRUTH.json]
    slide_compare.py --self-test

Each CSV has WSInfer's columns: minx, miny, width, height (level-0 pixels) and prob_<class>;
p(IDC) is --prob-column, else the last prob_ column (the positive class of a 2-class model).
TIME.txt is what `/usr/bin/time -v -o TIME.txt` wrote. The baseline tool (--baseline, wsinfer)
is what the others are matched to: the tools may start their patch grids at different origins,
so a patch matches the baseline patch whose centre is nearest, if within half a patch in x and
y, and only if that baseline patch has no nearer match (one to one). Prints per slide the patch
counts, matched count and Pearson correlation of p(IDC), with --truth the Dice of p > 0.5
against the fixture's IDC cells, then one markdown table:
| slide | tool | patches | wall s | peak RSS MB | speed-up | correlation |
(speed-up: baseline wall / tool wall; correlation: with the baseline on matched patches).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

COLUMNS = ("minx", "miny", "width", "height")


def read_patches(path: str, prob_column: str | None) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as err:
        sys.exit(f"slide_compare: cannot read {path}: {err}")
    return patches_frame(df, prob_column, path)


def patches_frame(df: pd.DataFrame, prob_column: str | None, source: str) -> pd.DataFrame:
    """The box, centre and p(IDC) of each patch."""
    missing = [c for c in COLUMNS if c not in df.columns]
    probs = [c for c in df.columns if c.startswith("prob_")]
    if missing or not probs:
        sys.exit(f"slide_compare: {source} lacks {missing or 'prob_<class> columns'} (has {list(df.columns)})")
    column = prob_column or probs[-1]
    if column not in df.columns:
        sys.exit(f"slide_compare: {source} has no column {column} (prob columns: {probs})")
    out = df[list(COLUMNS)].astype(float)
    out["p"] = df[column].astype(float)
    out["cx"] = out.minx + out.width / 2
    out["cy"] = out.miny + out.height / 2
    return out


def read_time(path: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) from GNU time's -v report."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        sys.exit(f"slide_compare: cannot read {path}: {err}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not wall or not rss:
        sys.exit(f"slide_compare: {path} is not a `/usr/bin/time -v` report (install Debian's `time`)")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds, int(rss.group(1)) / 1024


def match(base: pd.DataFrame, other: pd.DataFrame) -> np.ndarray:
    """Pairs (i in base, j in other) of mutually nearest centres within half a patch."""
    if base.empty or other.empty:
        return np.zeros((0, 2), dtype=int)
    bxy, oxy = base[["cx", "cy"]].to_numpy(), other[["cx", "cy"]].to_numpy()
    # Chebyshev distance: within half a patch in x and in y.
    d_ob, i_ob = cKDTree(bxy).query(oxy, p=np.inf)
    d_bo, i_bo = cKDTree(oxy).query(bxy, p=np.inf)
    half = np.minimum(base.width.to_numpy()[i_ob], other.width.to_numpy()) / 2
    j = np.arange(len(other))
    ok = (d_ob <= half) & (i_bo[i_ob] == j)
    return np.stack([i_ob[ok], j[ok]], axis=1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def dice(df: pd.DataFrame, truth: dict) -> float:
    """Dice of p > 0.5 against the truth's IDC cells, on patch centres."""
    cells = [c for c in truth["cells"] if c.get("label") is not None]
    if not cells:
        return float("nan")
    boxes = np.array([[c["x"], c["y"], c["x"] + c["width"], c["y"] + c["height"]] for c in cells], dtype=float)
    labels = np.array([c["label"] == 1 for c in cells])
    centres = cKDTree((boxes[:, :2] + boxes[:, 2:]) / 2)
    d, i = centres.query(df[["cx", "cy"]].to_numpy(), p=np.inf)
    inside = d <= truth["cell_px"] / 2
    truth_idc = np.where(inside, labels[i], False)
    pred = df.p.to_numpy() > 0.5
    # Missed IDC cells count against the tool too.
    missed = labels.sum() - np.unique(i[inside & labels[i]]).size
    denom = pred.sum() + truth_idc.sum() + missed
    return float(2 * (pred & truth_idc).sum() / denom) if denom else float("nan")


def compare(runs: list[tuple[str, str, str, str]], truths: dict[str, str], baseline: str,
            prob_column: str | None) -> list[dict]:
    slides: dict[str, dict[str, dict]] = {}
    for slide, tool, csv, time_file in runs:
        wall, rss = read_time(time_file)
        slides.setdefault(slide, {})[tool] = {"df": read_patches(csv, prob_column), "wall": wall, "rss": rss}
    rows = []
    for slide, tools in slides.items():
        base = tools.get(baseline)
        truth = json.loads(Path(truths[slide]).read_text()) if slide in truths else None
        print(f"## {slide}")
        for tool, r in tools.items():
            line = f"{tool}: {len(r['df'])} patches"
            row = {"slide": slide, "tool": tool, "patches": len(r["df"]), "wall": r["wall"],
                   "rss": r["rss"], "speedup": float("nan"), "corr": float("nan"), "matched": None}
            if base is not None and tool != baseline:
                pairs = match(base["df"], r["df"])
                row["matched"] = len(pairs)
                row["corr"] = pearson(base["df"].p.to_numpy()[pairs[:, 0]], r["df"].p.to_numpy()[pairs[:, 1]])
                row["speedup"] = base["wall"] / r["wall"] if r["wall"] > 0 else float("nan")
                line += f", {len(pairs)} matched to {baseline}'s, Pearson r of p(IDC) {row['corr']:.4f}"
            elif tool == baseline:
                row["speedup"] = 1.0
            if truth is not None:
                row["dice"] = dice(r["df"], truth)
                idc_cells = sum(1 for c in truth["cells"] if c.get("label") == 1)
                line += f", Dice vs truth ({idc_cells} IDC of {len(truth['cells'])} cells) {row['dice']:.3f}"
            print(line)
            rows.append(row)
        print()
    return rows


def table(rows: list[dict]) -> str:
    def num(v: float, fmt: str) -> str:
        return "—" if v is None or v != v else format(v, fmt)

    lines = ["| slide | tool | patches | wall s | peak RSS MB | speed-up | correlation |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['slide']} | {r['tool']} | {r['patches']} | {num(r['wall'], '.1f')} | "
                     f"{num(r['rss'], '.0f')} | {num(r['speedup'], '.2f')}x | {num(r['corr'], '.4f')} |"
                     .replace("—x", "—"))
    return "\n".join(lines)


def self_test() -> None:
    """Two synthetic CSVs of one slide: grids at different origins, correlated probabilities."""
    import tempfile

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        size = 200
        xs, ys = np.meshgrid(np.arange(10, 40) * size, np.arange(5, 30) * size)
        p = 1 / (1 + np.exp(-(xs - 5000) / 800.0 + rng.normal(0, 0.3, xs.shape)))
        a = pd.DataFrame({"minx": xs.ravel(), "miny": ys.ravel(), "width": size, "height": size,
                          "prob_no_idc": 1 - p.ravel(), "prob_idc": p.ravel()})
        # The other tool: origin 37 px right and 61 px down, one row fewer, noisier.
        q = np.clip(p + rng.normal(0, 0.05, p.shape), 0, 1)
        b = pd.DataFrame({"minx": xs.ravel() + 37, "miny": ys.ravel() + 61, "width": size, "height": size,
                          "prob_0": 1 - q.ravel(), "prob_1": q.ravel()}).iloc[30:]
        a.to_csv(t / "a.csv", index=False)
        b.to_csv(t / "b.csv", index=False)
        for name, wall, rss in (("a", "1:02.50", 1048576), ("b", "0:12.50", 524288)):
            (t / f"{name}.time").write_text(
                f"\tElapsed (wall clock) time (h:mm:ss or m:ss): {wall}\n\tMaximum resident set size (kbytes): {rss}\n")
        rows = compare([("synthetic", "wsinfer", str(t / "a.csv"), str(t / "a.time")),
                        ("synthetic", "idc", str(t / "b.csv"), str(t / "b.time"))], {}, "wsinfer", None)
        print(table(rows))
        idc = rows[1]
        expect = np.corrcoef(p.ravel()[30:], q.ravel()[30:])[0, 1]
        assert idc["matched"] == len(b), idc
        assert abs(idc["corr"] - expect) < 1e-9, (idc["corr"], expect)
        assert abs(idc["speedup"] - 5.0) < 1e-9 and rows[0]["wall"] == 62.5 and idc["rss"] == 512
        fa = patches_frame(a, None, "a")
        # Patches off the other's grid match nothing; two near one patch, only the nearer.
        far = b.assign(minx=b.minx + 100 * size)
        assert len(match(fa, patches_frame(far, None, "far"))) == 0
        twice = pd.concat([b, b.assign(minx=b.minx + 50)])
        pairs = match(fa, patches_frame(twice, None, "twice"))
        assert len(pairs) == len(b) and len(set(pairs[:, 0])) == len(b) and pairs[:, 1].max() < len(b)
    print("self-test passed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", nargs=4, action="append", default=[], metavar=("SLIDE", "TOOL", "CSV", "TIME"))
    ap.add_argument("--truth", nargs=2, action="append", default=[], metavar=("SLIDE", "TRUTH"))
    ap.add_argument("--baseline", default="wsinfer")
    ap.add_argument("--prob-column", help="the p(IDC) column (default: the last prob_ column)")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        self_test()
        return
    if not a.run:
        ap.error("give --run SLIDE TOOL CSV TIME at least once, or --self-test")
    rows = compare([tuple(r) for r in a.run], dict(a.truth), a.baseline, a.prob_column)
    print(table(rows))


if __name__ == "__main__":
    main()
