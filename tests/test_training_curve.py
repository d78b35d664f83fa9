"""benchmarks/training_curve.py: the fit recovers a known curve on either axis and projects where it meets a target."""

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _curve():
    spec = importlib.util.spec_from_file_location("training_curve", ROOT / "benchmarks" / "training_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _points(per_doubling_h: float, per_doubling_steps: float) -> list[dict]:
    """A run whose window BD-rate is -10 - 3·log2(CPU-h) with a +2 step at a change (segment 1), and whose steps
    cost more as it goes, so that the two axes give different lines; full range reads 1 point above the window."""
    pts = []
    for i, hours in enumerate([8, 10, 13, 16, 20, 25, 32, 40, 50, 64]):
        segment = int(hours >= 25)
        step = 1000 * hours ** (per_doubling_h / per_doubling_steps)  # log2(step) = k·log2(h) + const
        window = -10 + per_doubling_h * math.log2(hours) + 2.0 * segment
        pts.append({"step": step, "cpu_hours": float(hours), "phase": "stable", "segment": segment,
                    "bd_rate_vs_jpeg_window": window, "bd_rate_vs_jpeg": window + 1.0, "transient": None,
                    "gpu_hours": 0.0})
        if i == 4:
            pts.append({**pts[-1], "phase": "annealed", "bd_rate_vs_jpeg_window": -99.0})  # never fitted
    return pts


def test_the_fit_recovers_slope_step_and_target_on_both_axes():
    curve = _curve()
    pts = _points(-3.0, -2.0)
    fit = curve.fit_curve(pts, 8.0, -40.0)
    assert fit["points"] == 10 and fit["per_doubling"] == pytest.approx(-3.0)
    assert fit["segment_steps"][1] == pytest.approx(2.0)
    # full = window + 1 = -10 - 3·log2(h) + 2 + 1 = -40  →  log2(h) = 11
    assert fit["target_cpu_hours"] == pytest.approx(2 ** 11) and fit["remaining_cpu_hours"] == pytest.approx(2048 - 64)

    by_steps = curve.fit_curve(pts, 8.0, -40.0, axis="step")
    assert by_steps["per_doubling"] == pytest.approx(-2.0)  # the same points, the steps' own scale
    assert by_steps["latest_step"] == pytest.approx(pts[-1]["step"])
    assert by_steps["target_step"] == pytest.approx(1000 * 2048 ** 1.5)  # where the hours reach 2^11, on this run
    assert by_steps["remaining_steps"] == pytest.approx(1000 * (2048 ** 1.5 - 64 ** 1.5))
    assert "target_cpu_hours" not in by_steps


def test_the_latest_segment_alone_has_its_own_slope():
    curve = _curve()
    pts = _points(-3.0, -2.0)
    for p in pts:  # the latest segment (from 25 CPU-h) improves twice as fast as the run before it
        if p["segment"] == 1 and p["phase"] == "stable":
            p["bd_rate_vs_jpeg_window"] += -3.0 * (math.log2(p["cpu_hours"]) - math.log2(25))
            p["bd_rate_vs_jpeg"] = p["bd_rate_vs_jpeg_window"] + 1.0
    latest = curve.fit_curve(pts, 8.0, -40.0, latest_only=True)
    assert latest["segments"] == "latest" and latest["points"] == 5
    assert latest["per_doubling"] == pytest.approx(-6.0) and latest["segment_steps"] == {}
    assert curve.fit_curve(pts, 8.0, -40.0)["per_doubling"] > -6.0  # one slope for all: in between


def test_a_flat_fit_never_reaches_the_target():
    curve = _curve()
    pts = [{**p, "bd_rate_vs_jpeg_window": -20.0, "bd_rate_vs_jpeg": -19.0} for p in _points(-3.0, -2.0)]
    fit = curve.fit_curve(pts, 8.0, -40.0)
    assert fit["target_cpu_hours"] == math.inf


def test_a_new_learning_rate_starts_a_segment_like_the_other_changes():
    curve = _curve()
    jr, jq = [0.2, 0.5, 1.0, 2.0, 4.0], [26.0, 30.0, 34.0, 38.0, 42.0]
    est = [{"lambda": 0.01, "bpp": 0.15, "psnr": 27.0}, {"lambda": 0.1, "bpp": 1.5, "psnr": 38.0}]
    history = [{"step": 10, "cpu_hours": 1.0, "estimate": est},
               {"reanchored": {"from": [0.01], "to": [0.01, 0.1]}, "step": 11, "cpu_hours": 1.1},
               {"step": 20, "cpu_hours": 2.0, "estimate": est},
               {"learning_rate": {"from": 1e-3, "to": 5e-4}, "step": 21, "cpu_hours": 2.1},
               {"step": 30, "cpu_hours": 3.0, "estimate": est}]
    points, changes = curve.history_points(history, jr, jq, (28.0, 37.0))
    assert [p["segment"] for p in points] == [0, 1, 2]
    assert [(c["change"], c["segment"]) for c in changes] == [("re-anchored", 1), ("learning rate", 2)]
    assert points[0]["bd_rate_vs_jpeg_window"] is not None and points[0]["bd_rate_vs_jpeg"] < 0


def test_the_export_offset_takes_the_anneal_gain_measured_on_the_run_as_it_is_now(tmp_path):
    """offset = (shipped files − shipped estimate) + (this run's anneal − the stable evaluation it started from)."""
    import json

    curve = _curve()
    jr, jq = [0.2, 0.5, 1.0, 2.0, 4.0], [26.0, 30.0, 34.0, 38.0, 42.0]

    def rows(scale):  # the same PSNRs at `scale` times the rate: BD-rate (scale − 1)·100 against any curve
        return [{"lambda": lam, "bpp": scale * r, "psnr": q} for lam, r, q in zip([1, 2, 3], [0.3, 1.0, 3.0], [27.0, 33.0, 40.0])]

    def bd(scale):
        return curve._estimate_bd(rows(scale), jr, jq)

    shipped, annealed = tmp_path / "shipped.json", tmp_path / "annealed.json"
    shipped.write_text(json.dumps({"results": [{"step": -1, "rows": rows(0.5)}]}))
    annealed.write_text(json.dumps({"results": [{"step": 130, "anneal_from_step": 120, "rows": rows(0.45)}]}))
    history = [{"step": 100, "cpu_hours": 1.0, "estimate": rows(0.6)},
               {"step": 115, "cpu_hours": 1.2, "estimate": rows(0.48)},  # the evaluation the anneal started from
               {"step": 125, "cpu_hours": 1.3, "estimate": rows(0.4)}]   # after it: not the anneal's start
    export = {"model_id": "m", "files_bd_rate": bd(0.5) + 1.0, "from_step": 90, "from_bd_rate": -30.0, "offset": 9.9}
    out = curve.anneal_offset(export, shipped, annealed, history, jr, jq)
    assert out["files_minus_estimate"] == pytest.approx(1.0)
    assert out["anneal"]["from_step"] == 115 and out["anneal"]["gain"] == pytest.approx(bd(0.45) - bd(0.48))
    assert out["offset"] == pytest.approx(1.0 + bd(0.45) - bd(0.48))
