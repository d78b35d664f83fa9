"""Training is resumable, keeps stable and annealed checkpoints apart, and runs under torchrun."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vaecodec.model import ModelConfig
from vaecodec.training import DEFAULT_LR, TrainOptions, anneal, learning_rate, load_checkpoint, train

from conftest import TINY_CONFIG, smooth_image

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
needs_torchrun = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
TINY_CB = dict(TINY_CONFIG, kind="checkerboard", bottleneck_channels=12, context_channels=8)
FAST = TrainOptions(batch_size=2, patch=64, large_batch=1, large_patch=64, crop=64, crops_per_image=2)


@pytest.fixture()
def data(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):  # the CLI's crop pool takes 256² crops
        Image.fromarray(smooth_image(256, 264, seed=i)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("kind", ["hyperprior", "checkerboard"])
def test_train_saves_and_resumes_at_full_rate(tmp_path, data, kind):
    ckpt = tmp_path / "state.pt"
    cfg = ModelConfig(**(TINY_CB if kind == "checkerboard" else TINY_CONFIG))
    state = train(data, ckpt, config=cfg, steps=3, options=FAST, log=lambda *_: None)
    assert state.step == 3 and ckpt.exists()
    state = train(data, ckpt, steps=2, options=FAST, log=lambda *_: None)  # resumes; config comes from the file
    assert state.step == 5
    state, model, ema, opt = load_checkpoint(ckpt)
    assert state.step == 5 and state.cpu_seconds > 0 and state.phase == "stable"
    assert state.config == cfg
    raw = torch.load(ckpt, weights_only=True)  # stored compactly: no EMA, no momentum, bf16 second moments
    assert "ema" not in raw and all(set(s) == {"step", "exp_avg_sq"} for s in raw["optimizer"]["state"].values())
    assert all(s["exp_avg_sq"].dtype == torch.bfloat16 for s in raw["optimizer"]["state"].values())
    assert all(g["lr"] == DEFAULT_LR for g in opt["param_groups"])  # no decay in the stable phase
    assert state.lr == DEFAULT_LR


def test_a_compiled_run_trains_the_same_model_and_saves_plain_weights(tmp_path, data):
    """--compile changes how a step runs, not what it computes: same seed, same weights to float rounding,
    and the checkpoint holds the plain module's parameter names (no compiled wrapper's prefix)."""
    from dataclasses import replace

    cfg = ModelConfig(**TINY_CONFIG)
    eager, compiled = tmp_path / "eager.pt", tmp_path / "compiled.pt"
    options = replace(FAST, large_batch=FAST.batch_size)  # one batch shape: one compilation
    train(data, eager, config=cfg, steps=2, options=options, log=lambda *_: None)
    lines = []
    train(data, compiled, config=cfg, steps=2, options=replace(options, compile=True), log=lines.append)
    assert any("compiled" in line for line in lines)
    raw_eager, raw_compiled = (torch.load(p, weights_only=True)["model"] for p in (eager, compiled))
    assert list(raw_compiled) == list(raw_eager)
    for name, value in raw_eager.items():
        torch.testing.assert_close(raw_compiled[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_resume_keeps_the_runs_learning_rate_and_a_new_one_is_a_recorded_change(tmp_path, data):
    from dataclasses import replace

    stable, annealed = tmp_path / "stable.pt", tmp_path / "annealed.pt"
    train(data, stable, config=ModelConfig(**TINY_CONFIG), steps=2, options=FAST, log=lambda *_: None)
    lines = []
    state = train(data, stable, steps=2, options=replace(FAST, lr=4e-4), log=lines.append)
    assert state.lr == 4e-4
    assert {"learning_rate": {"from": DEFAULT_LR, "to": 4e-4}, "step": 2} in [
        {k: v for k, v in h.items() if k != "cpu_hours"} for h in state.history]
    assert any("learning rate 1.00e-03 -> 4.00e-04 from step 2" in line for line in lines)
    state = train(data, stable, steps=1, options=FAST, log=lambda *_: None)  # no --lr: the run's own, no new change
    _, _, _, opt = load_checkpoint(stable)
    assert state.lr == 4e-4 and opt["param_groups"][0]["lr"] == 4e-4
    assert sum("learning_rate" in h for h in state.history) == 1
    anneal(data, stable, annealed, 3, options=FAST, log=lambda *_: None)  # decays from the run's rate
    a_state, _, _, opt = load_checkpoint(annealed)
    assert a_state.lr == 4e-4 and opt["param_groups"][0]["lr"] == pytest.approx(0.05 * 4e-4)
    with pytest.raises(ValueError, match="decays from lr 0.0004, not 0.001"):  # continuing: one decay, one base
        anneal(data, stable, annealed, 3, options=replace(FAST, lr=1e-3), log=lambda *_: None)


def test_export_records_the_runs_rate_for_the_model_card(tmp_path, data):
    """bin/export-model writes training.json beside the model: the step, the history and the rate the decay began at."""
    import json
    from dataclasses import replace

    stable, annealed, out = tmp_path / "stable.pt", tmp_path / "annealed.pt", tmp_path / "model.pt"
    train(data, stable, config=ModelConfig(**TINY_CB), steps=2, options=replace(FAST, lr=3e-4), log=lambda *_: None)
    anneal(data, stable, annealed, 2, options=FAST, log=lambda *_: None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "bin", "export-model"), str(annealed), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    info = json.loads((tmp_path / "training.json").read_text())
    assert info["lr"] == 3e-4 and info["step"] == 4 and info["phase"] == "annealed"
    assert any("anneal_from_step" in h for h in info["history"])
    again = subprocess.run([sys.executable, os.path.join(root, "bin", "export-model"), str(annealed), str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "exists" in again.stderr  # never overwritten without --force


def test_a_new_run_at_its_own_rate_and_a_checkpoint_from_before_rates_were_recorded(tmp_path, data):
    from dataclasses import replace

    fresh, old = tmp_path / "fresh.pt", tmp_path / "old.pt"
    state = train(data, fresh, config=ModelConfig(**TINY_CONFIG), steps=2, options=replace(FAST, lr=2e-4),
                  log=lambda *_: None)
    assert state.lr == 2e-4 and not any("learning_rate" in h for h in state.history)  # a start, not a change
    blob = torch.load(fresh, weights_only=True)
    assert blob["lr"] == 2e-4
    del blob["lr"]  # as checkpoints were saved before runs recorded their rate: they ran at 1e-3
    torch.save(blob, old)
    assert load_checkpoint(old)[0].lr is None
    state = train(data, old, steps=1, options=FAST, log=lambda *_: None)
    assert state.lr == DEFAULT_LR and load_checkpoint(old)[3]["param_groups"][0]["lr"] == DEFAULT_LR


def test_evaluations_wait_for_the_ema_rebuilt_on_resume(tmp_path, data):
    """A stable checkpoint keeps no EMA: after a resume the EMA is the raw weights, so no estimate until it settles."""
    from dataclasses import replace

    ckpt = tmp_path / "state.pt"
    opts = replace(FAST, eval_every_s=0.0, ema_settle_steps=3, eval_lambdas=(0.01,))
    lines = []
    state = train(data, ckpt, config=ModelConfig(**TINY_CONFIG), steps=5, options=opts, eval_folder=data,
                  log=lines.append)
    assert [h["step"] for h in state.history] == [3, 4]  # checked before each step: the EMA has 3, then 4
    assert sum("evaluation deferred" in line and "(step 3)" in line for line in lines) == 1  # said once
    state = train(data, ckpt, steps=4, options=opts, eval_folder=data, log=lambda *_: None)
    assert [h["step"] for h in state.history] == [3, 4, 8]  # the resumed EMA counts from 0 again
    annealed = tmp_path / "annealed.pt"
    state = anneal(data, ckpt, annealed, 4, options=opts, eval_folder=data, log=lambda *_: None)
    assert [h["step"] for h in state.history if "step" in h] == [3, 4, 8, 12]  # an anneal's EMA starts at its start


def test_anneal_writes_a_separate_file_and_never_touches_the_stable_one(tmp_path, data):
    stable, annealed = tmp_path / "stable.pt", tmp_path / "annealed.pt"
    train(data, stable, config=ModelConfig(**TINY_CB), steps=3, options=FAST, log=lambda *_: None)
    before = stable.read_bytes()
    state = anneal(data, stable, annealed, 4, options=FAST, log=lambda *_: None)
    assert stable.read_bytes() == before
    assert state.phase == "annealed" and state.step == 7
    _, _, _, opt = load_checkpoint(annealed)
    assert opt["param_groups"][0]["lr"] < 0.1 * DEFAULT_LR  # decayed to the floor
    with pytest.raises(ValueError, match="annealed"):
        train(data, annealed, steps=1, options=FAST, log=lambda *_: None)
    # The stable run goes on at full rate.
    assert train(data, stable, steps=1, options=FAST, log=lambda *_: None).step == 4


def test_an_anneal_continues_only_with_its_own_length_and_widening_only_starts_runs(tmp_path, data):
    stable, annealed = tmp_path / "stable.pt", tmp_path / "annealed.pt"
    train(data, stable, config=ModelConfig(**TINY_CB), steps=2, options=FAST, log=lambda *_: None)
    anneal(data, stable, annealed, 3, options=FAST, log=lambda *_: None)
    with pytest.raises(ValueError, match="3 steps"):
        anneal(data, stable, annealed, 5, options=FAST, log=lambda *_: None)
    with pytest.raises(ValueError, match="widen"):
        train(data, stable, steps=1, options=FAST, log=lambda *_: None, widen_from=stable)


def test_learning_rate_warms_up_holds_and_decays():
    assert learning_rate(0, 1000) < learning_rate(99, 1000) == 1e-3
    assert learning_rate(600, 1000) == 1e-3
    assert learning_rate(999, 1000) < 1e-4
    assert learning_rate(10**7, 0, decay_fraction=0) == 1e-3  # stable phase: holds forever
    assert learning_rate(0, 100, warmup=0, decay_fraction=1.0) == 1e-3
    assert learning_rate(100, 100, warmup=0, decay_fraction=1.0) == pytest.approx(5e-5)


def test_cli_train_and_anneal(tmp_path, data):
    ckpt, annealed = tmp_path / "s.pt", tmp_path / "a.pt"
    common = ["--data", str(data), "--batch-size", "4", "--patch", "64", "--crops-per-image", "2"]
    run = subprocess.run([sys.executable, "-m", "vaecodec", "train", str(ckpt), "--model", "tiny", "--steps", "2",
                          *common], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "stopped at step 2" in run.stderr
    assert load_checkpoint(ckpt)[0].lr == DEFAULT_LR  # no --lr: a new run's default
    run = subprocess.run([sys.executable, "-m", "vaecodec", "anneal", str(ckpt), str(annealed), "--steps", "2",
                          *common], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert load_checkpoint(annealed)[0].phase == "annealed"
    run = subprocess.run([sys.executable, "-m", "vaecodec", "train", str(annealed), "--steps", "1", *common],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "annealed" in run.stderr


@needs_torchrun
def test_torchrun_two_processes(tmp_path, data):
    """DDP on 2 CPU processes: rank 0 saves, CPU time is summed over ranks, ranks stop together."""
    ckpt, log = tmp_path / "ddp.pt", tmp_path / "ddp.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29517", "-m", "vaecodec", "train", str(ckpt),
                          "--model", "tiny", "--steps", "150", "--save-every", "1", "--data", str(data),
                          "--batch-size", "4", "--patch", "64", "--crops-per-image", "2", "--log-file", str(log)],
                         capture_output=True, text=True, timeout=300, env=env)
    # A rank's own last words (a C++ "terminate ... what():", a Python error) come before torchrun's long
    # summary, which the tail alone would show: seen twice in ~50 runs here, SIGABRT in rank 1, cause unseen.
    cause = [line for line in run.stderr.splitlines() if any(k in line for k in ("what()", "terminate", "Error:"))]
    assert run.returncode == 0, "\n".join(cause[:20]) + "\n...\n" + run.stderr[-1500:]
    assert "rank 0 of 2" in run.stderr and "rank 1 of 2" not in run.stderr  # only rank 0 logs
    assert "rank 0 of 2" in log.read_text()  # --log-file: torchrun takes "--log" for its own --log-dir
    state, model, ema, _ = load_checkpoint(ckpt)
    assert state.step == 150  # periodic saves (collectives) were taken together: no rank stopped early


def test_adam_is_fused_and_resumes_a_state_saved_unfused():
    """Checkpoints written by the per-tensor Adam resume on the fused one, moments and step counts kept."""
    import copy

    from vaecodec.training.loop import make_adam

    torch.manual_seed(0)
    shapes = [(5, 3), (4,)]
    before = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    old = torch.optim.Adam(before, lr=1e-2)  # torch's default on the CPU: not fused
    assert not old.param_groups[0]["fused"]

    def step(params, opt):
        opt.zero_grad()
        sum((q.sin() * q).sum() for q in params).backward()
        opt.step()

    for _ in range(3):
        step(before, old)
    after = [torch.nn.Parameter(q.detach().clone()) for q in before]
    new = make_adam(after, 1e-2, copy.deepcopy(old.state_dict()))  # as from a file: no tensor shared with `old`
    assert new.param_groups[0]["fused"]
    for q_old, q_new in zip(before, after):
        assert torch.equal(new.state[q_new]["exp_avg_sq"], old.state[q_old]["exp_avg_sq"])
        assert float(new.state[q_new]["step"]) == 3
    step(before, old)
    step(after, new)
    for q_old, q_new in zip(before, after):  # the same update, up to float rounding
        torch.testing.assert_close(q_new, q_old, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_written_by_the_per_tensor_adam_resumes_fused(tmp_path):
    """Through the checkpoint file: second moments (stored in bfloat16) and step counts carried, momentum not."""
    from vaecodec.model import build_model
    from vaecodec.training.loop import TrainState, make_adam, save_checkpoint
    from vaecodec.training.loss import rd_loss

    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_CONFIG)
    model = build_model(cfg)
    old = torch.optim.Adam(model.parameters(), lr=1e-3)  # how the run's checkpoints were written until step 313,582
    x, lam = torch.rand(2, 3, 64, 64), torch.tensor([0.01, 0.05])
    for _ in range(3):
        old.zero_grad()
        rd_loss(model, cfg, x, lam)[0].backward()
        old.step()
    save_checkpoint(tmp_path / "old.pt", TrainState(cfg, step=3), model, model, old)
    _, resumed, _, saved = load_checkpoint(tmp_path / "old.pt")
    assert saved["param_groups"][0]["fused"] is not True
    new = make_adam(resumed.parameters(), 1e-3, saved)
    assert new.param_groups[0]["fused"]
    for q_new, q_old in zip(resumed.parameters(), model.parameters()):
        state = new.state[q_new]
        assert float(state["step"]) == 3 and state["step"].device == q_new.device
        assert torch.equal(state["exp_avg_sq"], old.state[q_old]["exp_avg_sq"].to(torch.bfloat16).float())
        assert not state["exp_avg"].any()
    new.zero_grad()
    rd_loss(resumed, cfg, x, lam)[0].backward()
    new.step()  # the fused kernel takes the loaded state
    assert all(float(new.state[q]["step"]) == 4 for q in resumed.parameters())


def _three_images(tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    for i in range(3):  # an odd count: the shards are uneven
        Image.fromarray(smooth_image(40 + 8 * i, 56, seed=10 + i)).save(folder / f"{i}.png")
    return folder


def test_sharded_evaluation_gives_the_rows_of_one_process(tmp_path):
    """Ranks split the evaluation images; the averaged rows equal one process evaluating them all."""
    from vaecodec.image import image_files
    from vaecodec.model import build_model
    from vaecodec.training.evaluate import evaluate_estimate, image_estimates, interleave

    folder, lambdas = _three_images(tmp_path), [0.004, 0.03]
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_CB))
    whole = evaluate_estimate(model, folder, lambdas)
    files = image_files(folder)
    shards = [image_estimates(model, files[r::2], lambdas) for r in range(2)]
    assert [len(s) for s in shards] == [2, 1]

    def gather(mine):
        assert mine == shards[0]  # this rank's share: images 0 and 2
        return shards

    assert evaluate_estimate(model, folder, lambdas, shard=(0, 2), gather=gather) == whole
    assert model.training  # its mode restored
    assert interleave(shards, 3) == image_estimates(model, files, lambdas)  # per image, in folder order
    assert interleave([["a", "c"], ["b"]], 3) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="same folder"):
        interleave([["a"], ["b"]], 3)
    with pytest.raises(ValueError, match="gather"):
        evaluate_estimate(model, folder, lambdas, shard=(0, 2))


DDP_EVAL = """
import json, sys, torch, torch.distributed as dist
from vaecodec.model import ModelConfig, build_model
from vaecodec.training.evaluate import evaluate_estimate
from vaecodec.training.loop import _gathered
dist.init_process_group("gloo")
torch.manual_seed(0)
model = build_model(ModelConfig(**json.loads(sys.argv[1])))
rows = evaluate_estimate(model, sys.argv[2], [0.004, 0.03], shard=(dist.get_rank(), 2), gather=_gathered)
if dist.get_rank() == 0:
    json.dump({"sharded": rows, "whole": evaluate_estimate(model, sys.argv[2], [0.004, 0.03])}, open(sys.argv[3], "w"))
dist.destroy_process_group()
"""


@needs_torchrun
def test_torchrun_evaluation_is_shared_by_the_ranks(tmp_path):
    """Two processes each evaluate part of the images and gather the rest: the rows of one process."""
    import json

    script, out = tmp_path / "ddp_eval.py", tmp_path / "rows.json"
    script.write_text(DDP_EVAL)
    run = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), json.dumps(TINY_CB),
                          str(_three_images(tmp_path)), str(out)],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert rows["sharded"] == rows["whole"] and len(rows["whole"]) == 2


def test_widening_keeps_the_function_and_training_continues(tmp_path, data):
    """A hyperprior widened into a checkerboard model reconstructs identically and codes z identically."""
    from vaecodec.model import HyperpriorModel
    from vaecodec.training.warm_start import widen

    torch.manual_seed(0)
    old = HyperpriorModel(ModelConfig(**TINY_CONFIG)).eval()
    cfg = ModelConfig(**dict(TINY_CB, latent_channels=16, bottleneck_channels=12, hyper_hidden=20,
                             lambdas=tuple(0.0008 * 2**k for k in range(11))))
    new = widen(old, cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    lam = torch.tensor([old.config.lambdas[3]])
    for lam_value in old.config.lambdas:
        lam = torch.tensor([lam_value])
        a, b = old(x, lam, hard=True), new(x, lam, hard=True)
        assert torch.allclose(a.x_hat, b.x_hat, atol=1e-5)
        assert torch.equal(a.bits_z, b.bits_z)
        assert b.bits_y.item() == pytest.approx(a.bits_y.item(), rel=0.01, abs=1.0)  # the new channels cost ~0
    # Training starts from it (and its CPU time is inherited).
    old_ckpt = tmp_path / "old.pt"
    train(data, old_ckpt, config=ModelConfig(**TINY_CONFIG), steps=2, options=FAST, log=lambda *_: None)
    state = train(data, tmp_path / "new.pt", config=cfg, steps=2, options=FAST, log=lambda *_: None, widen_from=old_ckpt)
    assert state.step == 2 and state.cpu_seconds > load_checkpoint(old_ckpt)[0].cpu_seconds
    assert state.history[0]["widened_from"] == str(old_ckpt)


def test_sigterm_saves_before_exit(tmp_path, data):
    """Stopping a run (kill, Ctrl-C) finishes the step, saves the checkpoint and exits cleanly."""
    import signal
    import time

    ckpt, log = tmp_path / "s.pt", tmp_path / "log.txt"
    proc = subprocess.Popen([sys.executable, "-m", "vaecodec", "train", str(ckpt), "--model", "tiny", "--data", str(data),
                             "--batch-size", "4", "--patch", "64", "--crops-per-image", "2", "--log", str(log)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and "crop pool" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by signal" in err
    assert load_checkpoint(ckpt)[0].step > 0


@pytest.mark.parametrize("slices", [(), (2, 4, 6)])
def test_a_checkerboard_model_widens_at_full_resolution(slices):
    from vaecodec.training.warm_start import widen
    from vaecodec.model import build_model

    torch.manual_seed(1)
    cb = dict(TINY_CB, channel_slices=slices)
    old = build_model(ModelConfig(**cb)).eval()
    with torch.no_grad():
        old.entropy_parameters[-1].weight.normal_(0, 0.1)  # a live context
        for layers in getattr(old, "channel_parameters", []):  # and a live channel context
            layers[-1].weight.normal_(0, 0.1)
    new = widen(old, ModelConfig(**dict(cb, channels=12))).eval()
    x = torch.rand(1, 3, 64, 64)
    for lam in old.config.lambdas:
        a, b = old(x, torch.tensor([lam]), hard=True), new(x, torch.tensor([lam]), hard=True)
        assert torch.allclose(a.x_hat, b.x_hat, atol=1e-5) and torch.allclose(a.bits_y, b.bits_y, rtol=1e-4)
    with pytest.raises(ValueError, match="full resolution"):
        widen(old, ModelConfig(**dict(cb, latent_channels=16, channel_slices=(4, 4, 8) if slices else ())))
    with pytest.raises(ValueError, match="full resolution"):  # a channel context is grown, not widened into
        widen(old, ModelConfig(**dict(cb, channels=12, channel_slices=(6, 6) if slices else (12,))))


def test_a_non_finite_loss_skips_the_update_and_never_reaches_the_checkpoint(tmp_path, data, monkeypatch):
    """A NaN step once turned a long run's only checkpoint into NaN weights: now the update is skipped."""
    import vaecodec.training.loop as loop

    real = loop.rd_loss
    calls = []

    def sometimes_nan(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), stats) if len(calls) in (2, 3) else (loss, stats)

    monkeypatch.setattr(loop, "rd_loss", sometimes_nan)
    ckpt = tmp_path / "state.pt"
    lines = []
    state = train(data, ckpt, config=ModelConfig(**TINY_CONFIG), steps=5, options=FAST, log=lines.append)
    assert state.step == 5
    _, model, _, _ = load_checkpoint(ckpt)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_weights_that_are_not_finite_are_never_saved(tmp_path, data):
    from vaecodec.training.loop import save_checkpoint

    ckpt = tmp_path / "state.pt"
    train(data, ckpt, config=ModelConfig(**TINY_CONFIG), steps=1, options=FAST, log=lambda *_: None)
    before = ckpt.read_bytes()
    state, model, ema, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(FloatingPointError, match="not finite"):
        save_checkpoint(ckpt, state, model, ema, opt)
    assert ckpt.read_bytes() == before


def test_training_stops_when_every_update_is_non_finite(tmp_path, data, monkeypatch):
    import vaecodec.training.loop as loop

    real = loop.rd_loss
    monkeypatch.setattr(loop, "MAX_SKIPPED_IN_A_ROW", 3)
    lines = []
    ckpt = tmp_path / "s.pt"
    train(data, ckpt, config=ModelConfig(**TINY_CONFIG), steps=1, options=FAST, log=lambda *_: None)
    monkeypatch.setattr(loop, "rd_loss", lambda *a, **k: (lambda r: (r[0] * float("nan"), r[1]))(real(*a, **k)))
    good = ckpt.read_bytes()
    state = train(data, ckpt, steps=50, options=FAST, log=lines.append)
    assert state.step == 4 and any("non-finite" in line for line in lines)
    assert ckpt.read_bytes() == good  # weights that diverge on every batch never replace the last good state


@pytest.mark.parametrize("kind", ["hyperprior", "checkerboard"])
def test_bfloat16_autocast_keeps_the_rates_and_distortion_in_float32(kind):
    from vaecodec.model import build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig(**(TINY_CB if kind == "checkerboard" else TINY_CONFIG)))
    x = torch.rand(2, 3, 64, 64)
    lam = torch.tensor([0.004, 0.05])
    torch.manual_seed(1)
    ref = net(x, lam)
    torch.manual_seed(1)  # the same noise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net(x, lam)
    for name in ("bits_y", "bits_z", "mse", "x_hat"):
        assert getattr(mixed, name).dtype == torch.float32, name
    # The transforms' bfloat16 arithmetic moves the numbers a little, not the rate model's.
    assert torch.allclose(mixed.bits_z, ref.bits_z)
    assert torch.allclose(mixed.bits_y, ref.bits_y, rtol=0.05)
    assert torch.allclose(mixed.mse, ref.mse, rtol=0.05)


def test_bfloat16_training_steps_and_saves_float32_weights(tmp_path, data):
    from dataclasses import replace

    ckpt = tmp_path / "state.pt"
    state = train(data, ckpt, config=ModelConfig(**TINY_CB), steps=2, options=replace(FAST, precision="bfloat16"),
                  log=lambda *_: None)
    assert state.step == 2
    _, model, _, _ = load_checkpoint(ckpt)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in model.state_dict().values()
               if v.is_floating_point())


def test_precision_auto_is_bfloat16_only_where_it_is_native(monkeypatch):
    from vaecodec.training import loop

    assert loop.resolve_precision("float32", "cpu") == "float32"
    assert loop.resolve_precision("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(loop, "native_bfloat16", lambda device: False)
    assert loop.resolve_precision("auto", "cpu") == "float32"
    monkeypatch.setattr(loop, "native_bfloat16", lambda device: True)
    assert loop.resolve_precision("auto", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="unknown precision"):
        loop.resolve_precision("float16", "cpu")


def test_reanchoring_keeps_the_model_inside_the_old_span_and_training_continues_over_the_new(tmp_path, data):
    from vaecodec.training.warm_start import reanchor

    stable, wider = tmp_path / "s.pt", tmp_path / "w.pt"
    cfg = ModelConfig(**TINY_CB)
    train(data, stable, config=cfg, steps=2, options=FAST, log=lambda *_: None)
    old_state, old_model, _, _ = load_checkpoint(stable)
    top = cfg.lambdas[-1]
    state = reanchor(stable, wider, cfg.lambdas + (2 * top, 4 * top))
    assert state.config.lambdas[-1] == 4 * top and state.step == old_state.step
    assert state.cpu_seconds == old_state.cpu_seconds and state.history[-1]["reanchored"]["to"][-1] == 4 * top
    _, new_model, _, opt = load_checkpoint(wider)
    lam = torch.tensor([cfg.lambdas[0], cfg.lambdas[3] * 1.3, top])  # inside the old span: the same gains
    assert torch.allclose(new_model.log_gain(lam), old_model.log_gain(lam), atol=1e-5)
    assert new_model.log_gains.shape[0] == len(cfg.lambdas) + 2
    state = train(data, wider, steps=2, options=FAST, log=lambda *_: None)  # Adam's state fits the new gains
    assert state.step == old_state.step + 2 and state.config.lambdas[-1] == 4 * top
    for bad in ((top,), (2 * top, top), (0.0, top)):
        with pytest.raises(ValueError):
            reanchor(stable, tmp_path / "x.pt", bad)
    run = subprocess.run([sys.executable, "-m", "vaecodec", "reanchor", str(stable), str(stable), "--lambdas", "a,b"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "Traceback" not in run.stderr


def test_growing_a_channel_context_keeps_the_estimate_and_training_continues(tmp_path, data):
    from vaecodec.training.warm_start import add_channel_context

    stable, grown = tmp_path / "s.pt", tmp_path / "c.pt"
    cfg = ModelConfig(**TINY_CB)
    train(data, stable, config=cfg, steps=2, options=FAST, log=lambda *_: None)
    old_state, old_model, _, old_opt = load_checkpoint(stable)
    state = add_channel_context(stable, grown, (2, 4, 6), data, crops=2, log=lambda *_: None)
    assert state.config.channel_slices == (2, 4, 6) and state.step == old_state.step
    assert state.cpu_seconds == old_state.cpu_seconds
    order = torch.tensor(state.history[-1]["channel_context"]["order"])
    assert sorted(order.tolist()) == list(range(12))
    _, new_model, _, opt = load_checkpoint(grown)
    x, lam = torch.rand(1, 3, 64, 64), torch.tensor([0.01])
    with torch.no_grad():
        a, b = old_model(x, lam, hard=True), new_model(x, lam, hard=True)
    assert torch.allclose(a.bits_y, b.bits_y, rtol=1e-5) and torch.allclose(a.mse, b.mse, rtol=1e-5)
    # Adam's step sizes moved with their channels (the gains: index 0 in both models).
    assert torch.equal(opt["state"][0]["exp_avg_sq"], old_opt["state"][0]["exp_avg_sq"][:, order])
    names = [n for n, _ in old_model.named_parameters()]
    first = names.index("entropy_parameters.0.weight")  # inputs: (μ | log2 σ) halves, then the context features
    halves = torch.cat([order, 12 + order, torch.arange(24, old_opt["state"][first]["exp_avg_sq"].shape[1])])
    assert torch.equal(opt["state"][first]["exp_avg_sq"], old_opt["state"][first]["exp_avg_sq"][:, halves])
    assert train(data, grown, steps=2, options=FAST, log=lambda *_: None).step == old_state.step + 2
    with pytest.raises(ValueError, match="not a checkerboard"):
        add_channel_context(grown, tmp_path / "x.pt", (2, 4, 6), data, crops=2, log=lambda *_: None)
    with pytest.raises(ValueError, match="sum to"):
        add_channel_context(stable, tmp_path / "x.pt", (2, 4), data, crops=2, log=lambda *_: None)
    run = subprocess.run([sys.executable, "-m", "vaecodec", "add-channel-context", str(stable), str(tmp_path / "y.pt"),
                          "--slices", "5,5", "--data", str(data)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr and "sum to" in run.stderr
    assert not (tmp_path / "y.pt").exists()


def test_crop_pool_batches_are_contiguous_crops_of_its_images(data):
    """Contiguous NCHW: a channels-last view would make torch run the whole training step channels-last."""
    from vaecodec.training.data import CropPool

    pool = CropPool(data, crop=256, crops_per_image=2, seed=3)
    x = pool.batch(3, 128)
    assert x.shape == (3, 3, 128, 128) and x.dtype == torch.float32 and x.is_contiguous()
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # Every sample is a (possibly mirrored) 128² window of one of the pool's crops, scaled to [0, 1].
    pixels = torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    def window_of(crop, sample) -> bool:  # rows matching the sample's first row, then the whole window
        for oy in range(crop.shape[0] - 127):
            runs = np.lib.stride_tricks.sliding_window_view(crop[oy], (128, 3))[:, 0]
            for ox in np.flatnonzero((runs == sample[0]).all(axis=(1, 2))):
                if (crop[oy:oy + 128, ox:ox + 128] == sample).all():
                    return True
        return False

    for sample in pixels:
        assert any(window_of(crop, candidate) for crop in pool.crops for candidate in (sample, sample[:, ::-1]))


def test_a_crop_pool_built_by_several_processes_is_the_same_for_any_number_of_them(tmp_path):
    from vaecodec.training.data import CropPool

    for i in range(3):  # large enough for downscaled crops of 64² at random factors
        Image.fromarray(smooth_image(90 + 7 * i, 100, seed=i)).save(tmp_path / f"{i}.png")
    one = CropPool(tmp_path, crop=64, crops_per_image=4, seed=2)
    two = CropPool(tmp_path, crop=64, crops_per_image=4, seed=2, workers=2)
    three = CropPool(tmp_path, crop=64, crops_per_image=4, seed=2, workers=3)
    assert two.crops.shape == one.crops.shape == (12, 64, 64, 3)
    assert np.array_equal(two.crops, three.crops)
    assert not np.array_equal(one.crops, two.crops)  # per-image seeds: other crops than one generator's
    assert not np.array_equal(two.crops, CropPool(tmp_path, crop=64, crops_per_image=4, seed=3, workers=2).crops)
