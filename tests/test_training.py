"""Training is resumable: a checkpoint restores model, EMA, optimizer and counters."""

import torch
from PIL import Image

from vaecodec.model import ModelConfig
from vaecodec.training import learning_rate, load_checkpoint, train

from conftest import TINY_CONFIG, smooth_image


def test_train_saves_and_resumes(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(80, 96, seed=i)).save(data / f"{i}.png")
    ckpt = tmp_path / "state.pt"
    cfg = ModelConfig(**TINY_CONFIG)
    kw = dict(config=cfg, batch_size=2, patch=64, crop=64, log=lambda *_: None)
    state = train(data, ckpt, total_steps=3, **kw)
    assert state.step == 3 and ckpt.exists()
    state = train(data, ckpt, total_steps=5, **kw)  # resumes, optimizer moments back in float32
    assert state.step == 5
    state, model, ema, opt = load_checkpoint(ckpt)
    assert state.step == 5 and state.cpu_seconds > 0
    assert any(s["exp_avg"].dtype == torch.bfloat16 for s in opt["state"].values())  # stored compactly


def test_learning_rate_warms_up_holds_and_decays():
    assert learning_rate(0, 1000) < learning_rate(99, 1000) == 1e-3
    assert learning_rate(600, 1000) == 1e-3
    assert learning_rate(999, 1000) < 1e-4
