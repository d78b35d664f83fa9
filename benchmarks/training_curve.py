#!/usr/bin/env python3
"""The training curve: CPU-hours spent → Kodak BD-rate vs JPEG, for every run on record.

    python benchmarks/training_curve.py [CHECKPOINT_OR_TRAINING_JSON ...] \
        [--jpeg benchmarks/results/kodak.json] [--out benchmarks/results/training-curve] \
        [--anneal-estimate benchmarks/results/anneal-gain-lr5e-4.json]

Each source is a training checkpoint (its ``history``) or an exported model's
``training.json``. Every periodic evaluation in it (the model's own rate
estimate Σ −log2 p of the rounded latents on the 24 Kodak images, several λ)
becomes one point: its BD-rate (PSNR) against the JPEG curve measured from
file bytes in ``--jpeg`` (``benchmarks/kodak.py`` writes it). Estimates are not
files: a file's rate is the estimate plus 0.1–1 % (see the model card); the
final point of each shipped model is measured from files in ``kodak.json``.

Each point also gets its BD-rate over a fixed PSNR window (``--window``,
28–37 dB), which every evaluation of the stable run since ~8 CPU-h covers
(the window was 27–37 dB until the evaluation at step 318,185 reached 27.02 dB
at its lowest anchor: a point whose curve does not span the window has no
window figure; every run of this script recomputes all points in the current window):
the full-range figure moves when the trained λ range moves (the stable run
was re-anchored at 21.45 CPU-h to reach higher PSNR, where JPEG is
strongest), the window figure less. The fit is a line in log2(CPU-hours)
through the window figures of the last run's stable points (``--fit-from``
CPU-h on), with a step after each change to the run (re-anchoring, a
channel context grown on it, a new stable learning rate) once two points follow it: the gain per
doubling of training, what each change did at equal CPU-hours, and where the
latest segment reaches the target (``--target``, −40 %) once the latest
point's full-range−window offset is added back. ``projections`` holds that
fit (``fit``) and three more: against training steps instead of CPU-hours (a
CPU-hour buys a different number of steps on each machine this runs on, and
the cost per step grew with the model), and each axis on the latest segment
alone (its own slope). Their spread is how uncertain the projection is; a
step fit's remainder is priced at the cost per step between the last two
evaluations.

The curve is the stable run's EMA, but the bar is a shipped model's files: an
export anneals first (which gains) and files carry a little more than the
estimate (which loses). Both at once are measured on the shipped model
(``--shipped``, its ``training.json``): its BD-rate from files in ``--jpeg``
minus the stable evaluation its anneal started from. The fit also says where
the stable estimate reaches the target less that offset, i.e. when an export
would meet the target from files. An anneal gains less from a lower learning
rate, so after the run changes its rate, ``--anneal-estimate`` (an anneal of
the run as it is now, measured by ``checkpoint_estimate.py``) gives the
anneal's part of the offset, and the shipped model's own estimate
(``--shipped-estimate``) the files' part.

Writes ``OUT.json`` (the points and the fit) and ``OUT.png`` (the plot, with matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from vaecodec.metrics import bd_rate  # noqa: E402

DEFAULT_SOURCES = [ROOT / "vaecodec" / "weights" / "training-hp64.json", ROOT / "checkpoints" / "cc-stable.pt"]

TRANSIENT = {255188: "21 steps after a resume (the eval timer fired at once after a 90-minute pause): a stable "
                     "checkpoint keeps no EMA, so this read the raw weights (benchmarks/results/ema-gap.json); "
                     "evaluations now wait for the EMA to settle (EMA_SETTLED_STEPS)",
             261715: "2,473 steps after a resume, before evaluations waited for the EMA to settle: 8 % of the "
                     "EMA was still the raw weights it was rebuilt from"}
"""Evaluations that are kept in the data and the plot but left out of the fit, by step, with the reason."""


def load_history(path: Path) -> tuple[str, list[dict]]:
    """(run name, evaluation rows) from a checkpoint or a training.json."""
    if path.suffix == ".json":
        info = json.loads(path.read_text())
        return info.get("model_id", path.stem), info.get("history", [])
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=True)
    kind = blob["config"].get("kind", "hyperprior") + (" + channel slices" if blob["config"].get("channel_slices") else "")
    return f"{path.stem} ({kind})", blob.get("history", [])


def jpeg_curve(path: Path) -> tuple[list[float], list[float]]:
    report = json.loads(path.read_text())
    curve = next(c for c in report["curves"] if c["name"] == "jpeg")
    return [p["bpp"] for p in curve["points"]], [p["psnr"] for p in curve["points"]]


CHANGES = {"reanchored": "re-anchored", "channel_context": "channel context", "learning_rate": "learning rate"}
"""History rows that change a run (``vaecodec reanchor``, ``add-channel-context``, ``train --lr``): each starts a segment."""


def history_points(history: list[dict], jr: list[float], jq: list[float],
                   window: tuple[float, float]) -> tuple[list[dict], list[dict]]:
    """(points, changes) of one run's history: a point per evaluation, its segment counted by the changes before it."""
    points, changes, segment = [], [], 0
    for row in history:
        change = next((label for key, label in CHANGES.items() if key in row), None)
        if change:
            segment += 1
            changes.append({"cpu_hours": row["cpu_hours"], "change": change, "segment": segment})
        if "estimate" not in row:
            continue
        est = row["estimate"]
        rates, psnrs = [e["bpp"] for e in est], [e["psnr"] for e in est]
        bd = bd_rate(jr, jq, rates, psnrs)
        covers = min(psnrs) <= window[0] and max(psnrs) >= window[1]
        bd_window = bd_rate(jr, jq, rates, psnrs, quality_window=window) if covers else None
        points.append({"step": row["step"], "cpu_hours": row["cpu_hours"], "gpu_hours": row.get("gpu_hours", 0.0),
                       "phase": row.get("phase", "stable"), "segment": segment, "bd_rate_vs_jpeg": bd,
                       "bd_rate_vs_jpeg_window": bd_window, "transient": TRANSIENT.get(row["step"]),
                       "psnr_range": [min(e["psnr"] for e in est), max(e["psnr"] for e in est)]})
    return points, changes


def fit_curve(points: list[dict], fit_from: float, target: float, axis: str = "cpu_hours",
              latest_only: bool = False) -> dict | None:
    """Least squares bd_window = a + b·log2(X) + c_k over the stable points from ``fit_from`` CPU-hours on
    (none after GPU training: their CPU-hours leave the GPU's work out), X the point's ``axis`` (``cpu_hours``,
    or ``step``: the same training on any machine, where a CPU-hour's worth of steps differs up to ~3.5×), where
    c_k is a step for each segment k of the run after a change (a re-anchoring, a channel context grown on
    it, a new stable learning rate); the X where the latest segment's line plus (full − window of the latest point) reaches ``target``.

    One slope for the whole run; a change shifts the line by its step at equal CPU-hours, estimated from
    the segment's points once it has two (a segment with fewer is left out, and the projection starts
    from the segment before it). ``latest_only``: the latest such segment alone, its own slope (the
    run as it is now, on fewer points).
    """
    # A point after GPU training sits at CPU-hours that leave out the GPU's work: kept on the plot, not fitted.
    pts = [p for p in points if p["phase"] == "stable" and p["cpu_hours"] >= fit_from
           and p["bd_rate_vs_jpeg_window"] is not None and not p.get("transient") and not p.get("gpu_hours")]
    counts = {}
    for p in pts:
        counts[p.get("segment", 0)] = counts.get(p.get("segment", 0), 0) + 1
    segments = sorted(k for k, n in counts.items() if n >= 2)
    if latest_only:
        segments = segments[-1:]
    pts = [p for p in pts if p.get("segment", 0) in segments]
    if len(pts) < 3 or len(pts) < 2 + len(segments):
        return None
    first, later = segments[0], segments[1:]
    x = np.array([[1.0, math.log2(p[axis])] + [float(p.get("segment", 0) == k) for k in later] for p in pts])
    y = np.array([p["bd_rate_vs_jpeg_window"] for p in pts])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    a, b = float(coef[0]), float(coef[1])
    steps = {int(k): float(c) for k, c in zip(later, coef[2:])}
    c = steps[later[-1]] if later else 0.0
    resid = float(np.sqrt(np.sum((y - x @ coef) ** 2) / max(1, len(y) - len(coef))))
    last = pts[-1]
    offset = last["bd_rate_vs_jpeg"] - last["bd_rate_vs_jpeg_window"]
    fit = {"axis": axis, "segments": "latest" if latest_only else "all", "points": len(pts),
           "from_cpu_hours": fit_from, "intercept": a + c, "per_doubling": b, "segment_steps": steps, "residual_sd": resid, "latest_offset_full_minus_window": offset,
           "latest_cpu_hours": last["cpu_hours"], "latest_step": last["step"], "target": target}
    return {**fit, **hours_to_reach(fit, target)}


def hours_to_reach(fit: dict, target: float) -> dict:
    """Where the fit's latest segment, plus the latest full−window offset, reaches full-range ``target``:
    ``target_cpu_hours`` and ``remaining_cpu_hours`` (``target_step``, ``remaining_steps`` on the step axis)."""
    b, axis = fit["per_doubling"], fit.get("axis", "cpu_hours")
    doublings = (target - fit["latest_offset_full_minus_window"] - fit["intercept"]) / b if b < -1e-9 else math.inf
    at = 2 ** doublings if doublings < 1000 else math.inf  # a flat (or rising) line never gets there
    left = at - fit[f"latest_{axis}"]
    return ({"target_cpu_hours": at, "remaining_cpu_hours": left} if axis == "cpu_hours"
            else {"target_step": at, "remaining_steps": left})


def export_offset(shipped: Path, jpeg: Path, jr: list[float], jq: list[float]) -> dict | None:
    """The shipped model's BD-rate from files (``jpeg``'s report, which must have measured that model) minus
    the stable evaluation its anneal started from (the last one before ``anneal_from_step``): what an export
    adds to the stable curve. None where either is missing."""
    if not shipped.exists():
        return None
    info = json.loads(shipped.read_text())
    start = next((r["anneal_from_step"] for r in info.get("history", []) if "anneal_from_step" in r), None)
    before = [r for r in info.get("history", []) if "estimate" in r and start is not None and r["step"] <= start]
    # The report that measured that model's files: ``jpeg``, or a saved run beside it (kodak-<model>.json or
    # kodak-<model>/kodak.json: the shipped default may be a derived model of the same weights, e.g. -r6w over
    # -r6, measured in kodak.json)
    for path in [jpeg, *sorted(jpeg.parent.glob("kodak-*.json")), *sorted(jpeg.parent.glob("kodak-*/kodak.json"))]:
        report = json.loads(path.read_text())
        files = next((r["bd_rate_psnr"] for r in report.get("summary", []) if r["codec"] == "vaecodec"), None)
        measured = next((c["library"] for c in report.get("curves", []) if c["name"] == "vaecodec"), "")
        if files is not None and f"({info.get('weight_hash')})" in measured:
            break
    else:
        return None  # no files of that model
    if not before:
        return None
    from_bd = _estimate_bd(before[-1]["estimate"], jr, jq)
    return {"model_id": info["model_id"], "files_bd_rate": files, "from_step": before[-1]["step"],
            "from_bd_rate": from_bd, "offset": files - from_bd}


def _estimate_bd(rows: list[dict], jr: list[float], jq: list[float]) -> float:
    return bd_rate(jr, jq, [e["bpp"] for e in rows], [e["psnr"] for e in rows])


def anneal_offset(export: dict, shipped_estimate: Path, anneal_estimate: Path, history: list[dict],
                  jr: list[float], jq: list[float]) -> dict:
    """The export offset split in two and the anneal's part measured on the run as it is now.

    ``export``'s offset (:func:`export_offset`) is one anneal's gain plus the shipped files' distance from the
    shipped model's own estimate. An anneal gains less from a lower learning rate, so once the run has changed
    its rate the shipped model's anneal no longer says what an export would gain. Here: files − estimate of
    the shipped model (``shipped_estimate``: ``checkpoint_estimate.py`` on its model file, 24 images) plus
    the gain of an anneal of this run (``anneal_estimate``: ``checkpoint_estimate.py`` on an annealed checkpoint,
    24 images, the evaluations' λ) over the stable evaluation in ``history`` it started from.
    """
    shipped = json.loads(shipped_estimate.read_text())["results"][0]
    annealed = json.loads(anneal_estimate.read_text())["results"][0]
    start = annealed.get("anneal_from_step")
    before = [r for r in history if "estimate" in r and start is not None and r["step"] <= start]
    if not before:
        raise SystemExit(f"{anneal_estimate}: no anneal_from_step, or no evaluation of this run before it")
    files_minus_estimate = export["files_bd_rate"] - _estimate_bd(shipped["rows"], jr, jq)
    annealed_bd, from_bd = _estimate_bd(annealed["rows"], jr, jq), _estimate_bd(before[-1]["estimate"], jr, jq)
    shipped_part = {k: export[k] for k in ("model_id", "files_bd_rate")}  # its own anneal's figures do not apply
    return {**shipped_part, "files_minus_estimate": files_minus_estimate,
            "anneal": {"estimate": str(anneal_estimate.relative_to(ROOT) if anneal_estimate.is_relative_to(ROOT)
                                       else anneal_estimate),
                       "annealed_step": annealed["step"], "from_step": before[-1]["step"], "from_bd_rate": from_bd,
                       "annealed_bd_rate": annealed_bd, "gain": annealed_bd - from_bd},
            "offset": files_minus_estimate + annealed_bd - from_bd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="*", type=Path, default=DEFAULT_SOURCES)
    ap.add_argument("--jpeg", type=Path, default=ROOT / "benchmarks" / "results" / "kodak.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training-curve")
    ap.add_argument("--window", default="28,37", help="PSNR window (dB) of the fixed-footing BD-rate")
    ap.add_argument("--fit-from", type=float, default=8.0, help="first CPU-hour of the fit")
    ap.add_argument("--target", type=float, default=-40.0, help="full-range BD-rate the fit projects to")
    ap.add_argument("--shipped", type=Path, default=ROOT / "vaecodec" / "weights" / "training.json",
                    help="the shipped model's training.json, whose files are in --jpeg or a saved run beside it "
                         "(kodak-*.json, kodak-*/kodak.json; the export offset)")
    ap.add_argument("--anneal-estimate", type=Path,
                    help="checkpoint_estimate.py's JSON of an anneal of the run as it is now (24 images): the "
                         "export offset's anneal part measured there, not on the shipped model's anneal")
    ap.add_argument("--shipped-estimate", type=Path,
                    default=ROOT / "benchmarks" / "results" / "anneal-gain-r6.json",
                    help="checkpoint_estimate.py's JSON of the shipped model file (with --anneal-estimate)")
    args = ap.parse_args()
    window = tuple(float(v) for v in args.window.split(","))
    jr, jq = jpeg_curve(args.jpeg)
    runs, changes, histories = [], [], []
    for src in args.sources:
        if not src.exists():
            print(f"skipping {src}: not found", file=sys.stderr)
            continue
        name, history = load_history(src)
        points, run_changes = history_points(history, jr, jq, window)
        changes += run_changes
        histories.append(history)
        runs.append({"source": str(src.relative_to(ROOT) if src.is_relative_to(ROOT) else src), "name": name,
                     "points": points})
        for p in points:
            bd = "n/a" if p["bd_rate_vs_jpeg"] is None else f"{p['bd_rate_vs_jpeg']:+.1f}%"
            bw = "n/a" if p["bd_rate_vs_jpeg_window"] is None else f"{p['bd_rate_vs_jpeg_window']:+.1f}%"
            print(f"{name:<32} step {p['step']:>7} {p['cpu_hours']:6.2f} CPU-h  {p['phase']:<9} "
                  f"BD-rate vs JPEG {bd} (window {bw})")
    export = export_offset(args.shipped, args.jpeg, jr, jq)
    if args.anneal_estimate:
        if not export or not histories:
            raise SystemExit("--anneal-estimate needs the shipped model's files (--shipped) and a run to fit")
        export = anneal_offset(export, args.shipped_estimate, args.anneal_estimate, histories[-1], jr, jq)
    # The same line fitted four ways: their spread is the projection's uncertainty.
    fits = [fit_curve(runs[-1]["points"], args.fit_from, args.target, axis, latest_only) if runs else None
            for axis in ("cpu_hours", "step") for latest_only in (False, True)]
    projections = [f for f in fits if f]
    for f in projections:
        if export:
            stable_target = args.target - export["offset"]
            f["export"] = {**export, "stable_target": stable_target, **hours_to_reach(f, stable_target)}
    fit = fits[0]  # by CPU-hours over all segments: the plot's line
    # What a step cost lately: CPU-hours per step differ by machine (up to ~3.5×), steps are the same training.
    stable = [p for p in runs[-1]["points"] if p["phase"] == "stable" and not p.get("gpu_hours")] if runs else []
    cost = None
    if len(stable) >= 2 and stable[-1]["step"] > stable[-2]["step"]:
        cost = {"cpu_seconds_per_step": 3600 * (stable[-1]["cpu_hours"] - stable[-2]["cpu_hours"])
                / (stable[-1]["step"] - stable[-2]["step"]), "from_step": stable[-2]["step"], "to_step": stable[-1]["step"]}
    if fit:
        print(f"fit ({fit['points']} points from {args.fit_from:g} CPU-h, {window[0]:g}-{window[1]:g} dB): "
              f"{fit['per_doubling']:+.2f}% per doubling of CPU-hours"
              + "".join(f", {v:+.2f}% after change {k}" for k, v in fit["segment_steps"].items())
              + f"; {args.target:g}% full-range at "
              f"~{fit['target_cpu_hours']:.0f} CPU-h ({fit['remaining_cpu_hours']:.0f} more)")
    if fit and "export" in fit:
        e = fit["export"]
        how = (f"{e['model_id']}'s files {e['files_minus_estimate']:+.2f} from its estimate, and an anneal of this run "
               f"to step {e['anneal']['annealed_step']} {e['anneal']['gain']:+.2f} from the stable evaluation at step "
               f"{e['anneal']['from_step']}, {e['anneal']['from_bd_rate']:+.1f}%" if "anneal" in e else
               f"{e['model_id']}: {e['files_bd_rate']:+.1f}% from files, annealed from the stable evaluation at step "
               f"{e['from_step']}, {e['from_bd_rate']:+.1f}%")
        print(f"export offset {e['offset']:+.2f} points ({how}): an export meets "
              f"{args.target:g}% from files once the stable estimate reaches {e['stable_target']:+.1f}%")
    if cost:
        print(f"a step cost {cost['cpu_seconds_per_step']:.2f} CPU-s from step {cost['from_step']} to {cost['to_step']} "
              "(steps priced at it below)")

    def left(f: dict, where: dict) -> str:
        if f["axis"] == "cpu_hours":
            return f"~{where['target_cpu_hours']:.0f} CPU-h ({where['remaining_cpu_hours']:.0f} more)"
        hours = f", ≈{where['remaining_steps'] * cost['cpu_seconds_per_step'] / 3600:.0f} CPU-h" if cost else ""
        return f"step ~{where['target_step']:,.0f} ({where['remaining_steps']:,.0f} more{hours})"

    for f in projections:
        name = (f"by {'CPU-hours' if f['axis'] == 'cpu_hours' else 'steps'}, "
                f"{'all segments' if f['segments'] == 'all' else 'latest segment'}")
        print(f"  {name:<30} {f['points']:>2} points, {f['per_doubling']:+.2f}%/doubling, sd {f['residual_sd']:.2f}: "
              f"{args.target:g}% at {left(f, f)}" + (f"; an export at {left(f, f['export'])}" if "export" in f else ""))
    result = {"command": "python benchmarks/training_curve.py " + " ".join(sys.argv[1:]),
              "jpeg": str(args.jpeg.relative_to(ROOT) if args.jpeg.is_relative_to(ROOT) else args.jpeg),
              "note": "BD-rate of the model's rate estimate on Kodak (24 images) against JPEG measured from files; "
                      f"bd_rate_vs_jpeg_window: over {window[0]:g}-{window[1]:g} dB only",
              "window_db": list(window), "changes": changes, "fit": fit, "projections": projections,
              "cost_per_step_lately": cost, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: wrote the JSON only (pip install 'vaecodec[bench]' for the plot)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        pts = [p for p in run["points"] if p["bd_rate_vs_jpeg"] is not None]
        if pts:
            ax.plot([p["cpu_hours"] for p in pts], [p["bd_rate_vs_jpeg"] for p in pts], marker="o", label=run["name"])
    last = [p for p in runs[-1]["points"] if p["bd_rate_vs_jpeg_window"] is not None] if runs else []
    if last:
        ax.plot([p["cpu_hours"] for p in last], [p["bd_rate_vs_jpeg_window"] for p in last], marker=".",
                linestyle=":", label=f"{runs[-1]['name']}, {window[0]:g}-{window[1]:g} dB only")
    if fit and math.isfinite(fit["target_cpu_hours"]):
        start = max([fit["from_cpu_hours"]] + [c["cpu_hours"] for c in changes])  # the latest segment's line
        hours = [start * 2 ** (k / 20) for k in range(200)]
        hours = [h for h in hours if h <= fit["target_cpu_hours"] * 1.05]
        shift = fit["intercept"] + fit["latest_offset_full_minus_window"]
        ax.plot(hours, [shift + fit["per_doubling"] * math.log2(h) for h in hours], color="grey", linestyle="--",
                linewidth=1, label=f"fit, full range ({fit['per_doubling']:+.1f}% per doubling)")
        ax.axhline(args.target, color="red", linewidth=0.8, linestyle="--")
        if "export" in fit:
            ax.axhline(fit["export"]["stable_target"], color="red", linewidth=0.8, linestyle=":",
                       label=f"where an export meets {args.target:g}% from files")
        ax.set_xscale("log", base=2)
    for change in changes:
        ax.axvline(change["cpu_hours"], color="green", linewidth=0.8, linestyle=":")
        ax.annotate(change["change"], (change["cpu_hours"], ax.get_ylim()[1]), fontsize=7, rotation=90, va="top",
                    ha="right")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("training CPU-hours (cumulative, inherited hours included)")
    ax.set_ylabel("Kodak BD-rate vs JPEG [%] (estimate)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
