"""The 8-bit synthesis: its integer program is exact, trains as it decodes, and forks from a float checkpoint."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vaecodec import int8_float
from vaecodec.fixedpoint import ACT_FRAC_BITS
from vaecodec.int8_float import Int8FloatProgram
from vaecodec.int8_synthesis import (ACT_TOP, INPUT_TOP, Int8Synthesis, Int8SynthesisProgram, _Int8Deconv, _Rescale,
                                     int_matmul)
from vaecodec.model import SimplifiedGDN, _deconv
from vaecodec.winograd import WinogradPhase

from conftest import make_tiny_model, smooth_image


def _synthesis(seed: int = 0, m: int = 16, w: int = 12, n: int = 8) -> Int8Synthesis:
    torch.manual_seed(seed)
    s = Int8Synthesis(_deconv(m, w), SimplifiedGDN(w, True), _deconv(w, n), SimplifiedGDN(n, True), _deconv(n, 3))
    with torch.no_grad():
        for layer in s:
            if isinstance(layer, SimplifiedGDN):
                layer.gamma.uniform_(0, 0.1)
                layer.beta.uniform_(0.5, 1.5)
    s.calibrate(torch.randn(2, m, 6, 7) * 3)
    return s


def _rescaled(v: torch.Tensor, m: torch.Tensor, shift: torch.Tensor, limit: int) -> torch.Tensor:
    """floor(v·m / 2^shift + ½) in int64 by division, no pre-clamp: the exact rescaling, another way."""
    num = 2 * v * torch.as_tensor(m).long() + 2**shift.long()
    return torch.div(num, 2 * 2**shift.long(), rounding_mode="floor").clamp(-limit, limit)


def _reference(program: Int8SynthesisProgram, a: torch.Tensor) -> torch.Tensor:
    """The program's integer arithmetic written plainly: torch's own transposed convolution on float64 integers,
    int64 elsewhere."""
    x = _rescaled(a[0].permute(1, 2, 0).long(), program.input_multiplier, program.input_shift, INPUT_TOP)
    for layer in program.layers:
        r = layer.rescale
        if isinstance(layer, _Int8Deconv):
            acc = F.conv_transpose2d(x.permute(2, 0, 1)[None].double(), layer.weight.double(), None, layer.stride,
                                     layer.padding, layer.stride - 1)[0].permute(1, 2, 0).long()
            x = _rescaled(_rescaled(acc + layer.bias, 1, r.pre_shift, 2**40), r.multiplier, r.shift, r.limit)
        else:
            norm = (x.abs().double() @ layer.gamma.double()).long() + layer.beta
            x = _rescaled(_rescaled(norm * x, 1, r.pre_shift, 2**40), r.multiplier, r.shift, r.limit)
    return x.permute(2, 0, 1)[None].double()


def _fixed(y: torch.Tensor) -> torch.Tensor:
    return torch.round(y.double() * 2.0**ACT_FRAC_BITS)


def test_the_program_computes_its_integer_arithmetic_exactly():
    program = Int8SynthesisProgram.from_module(_synthesis())
    y = _fixed(torch.randn(1, 16, 5, 9, generator=torch.Generator().manual_seed(1)) * 4)
    out = program.run(y)
    assert out.shape == (1, 3, 40, 72)  # three stride-2 layers
    assert torch.equal(out, _reference(program, y))
    assert torch.equal(Int8SynthesisProgram.from_tables(program.tables()).run(y), out)


def test_the_16_bit_input_is_multiplied_exactly_as_two_int8_digits():
    g = torch.Generator().manual_seed(4)
    program = Int8SynthesisProgram.from_module(_synthesis(seed=4))
    first = program.layers[0]
    assert first.digits and not any(layer.digits for layer in program.layers[1:] if isinstance(layer, _Int8Deconv))
    edges = torch.tensor([0, 1, -1, 127, -127, 128, -128, 254, 255, -255, 256, 32385, -32385, INPUT_TOP, -INPUT_TOP])
    x = torch.randint(-INPUT_TOP, INPUT_TOP + 1, (40, 16 * 9), generator=g)
    x[:, :len(edges)] = edges
    x[0] = INPUT_TOP  # the largest sums a digit's product can reach
    w = first.phases[0][3]
    assert torch.equal(first._matmul(x.to(torch.int16), w), x @ w.long())
    # ŷ far beyond the input's range saturates at ±32512, as the training forward clamps it
    y = _fixed(torch.randn(1, 16, 3, 4, generator=g) * 4)
    y[0, :, 0, 0] = 2.0**20
    y[0, :, 1, 1] = -2.0**20
    assert program.quantize_input(y).abs().max() == INPUT_TOP
    assert torch.equal(program.run(y), _reference(program, y))


def test_the_float32_path_gives_the_int8_kernels_integers(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = torch.randint(-ACT_TOP, ACT_TOP + 1, (70, 2500), generator=g, dtype=torch.int8)  # more terms than one chunk
    w = torch.randint(-ACT_TOP, ACT_TOP + 1, (2500, 24), generator=g, dtype=torch.int8)
    x[:5] = ACT_TOP
    w[:, :3] = ACT_TOP
    expected = x.long() @ w.long()
    assert torch.equal(int_matmul(x, w).long(), expected)
    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")
    assert torch.equal(int_matmul(x, w).long(), expected)
    program = Int8SynthesisProgram.from_module(_synthesis(seed=3))
    y = _fixed(torch.randn(1, 16, 4, 6, generator=g) * 4)
    assert torch.equal(program.run(y), _reference(program, y))


def test_lowered_float32_products_still_give_the_integers(monkeypatch):
    """Where a user lets float32 products run in bfloat16 or TF32 (here oneDNN's fpmath mode), the program
    leaves the float path and int_matmul its float32 chunks: the same integers."""
    g = torch.Generator().manual_seed(9)
    program = Int8SynthesisProgram.from_module(_synthesis(seed=4))
    y = _fixed(torch.randn(1, 16, 4, 6, generator=g) * 4)
    expected = _reference(program, y)
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "BF16")
    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")
    assert torch.equal(program.run(y), expected)
    x = torch.randint(-ACT_TOP, ACT_TOP + 1, (40, 1500), generator=g, dtype=torch.int8)
    w = torch.randint(-ACT_TOP, ACT_TOP + 1, (1500, 8), generator=g, dtype=torch.int8)
    assert torch.equal(int_matmul(x, w).long(), x.long() @ w.long())


@pytest.mark.parametrize("form", ["as built", "digit planes", "float64"])
def test_the_float_path_gives_the_int8_programs_integers(monkeypatch, form):
    if form == "digit planes":  # the first layer's 16-bit input as two float32 products instead of Winograd's
        monkeypatch.setattr(WinogradPhase, "of", lambda *args: None)
    if form == "float64":  # every product in float64, as a layer whose float32 sums could reach 2^24
        monkeypatch.setattr(int8_float, "FLOAT32_EXACT_LIMIT", 0.0)
    g = torch.Generator().manual_seed(5)
    program = Int8SynthesisProgram.from_module(_synthesis(seed=5))
    on_floats = Int8FloatProgram(program)
    first = on_floats.steps[0]
    assert (first.winograd is not None) == (form != "digit planes")
    assert {step.dtype for step in on_floats.steps} == {torch.float64 if form == "float64" else torch.float32}
    assert any(layer.rescale.any_pre for layer in program.layers)  # (without one: the test below)
    y = _fixed(torch.randn(1, 16, 5, 7, generator=g) * 4)  # odd sizes: partial Winograd tiles
    y[0, :, 0, 0], y[0, :, 2, 3] = 2.0**20, -2.0**20  # inputs that saturate
    expected = _reference(program, y)
    assert torch.equal(on_floats.run(y), expected)
    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")  # where int8 kernels do not pay: the float path
    assert torch.equal(program.run(y), expected)
    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "int8")  # the int8 kernels' path, however slow they are here
    assert torch.equal(program.run(y), expected)


def test_the_float_path_takes_a_rescaling_without_pre_shift_tiny_sizes_and_a_one_layer_program(monkeypatch):
    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")
    g = torch.Generator().manual_seed(8)
    tables = Int8SynthesisProgram.from_module(_synthesis(seed=5)).tables()
    assert tables["s8.2.pre_shift"].any()
    tables["s8.2.pre_shift"] = np.zeros_like(tables["s8.2.pre_shift"])  # the middle layer's: sums plus a bias,
    program = Int8SynthesisProgram.from_tables(tables)                  # rescaled by one multiplier alone
    assert not program.layers[2].rescale.any_pre
    for h, w in [(1, 1), (1, 4), (3, 1), (2, 2), (5, 7)]:
        y = _fixed(torch.randn(1, 16, h, w, generator=g) * 4)
        y[0, :, 0, 0] = 2.0**20
        assert torch.equal(program.run(y), _reference(program, y)), (h, w)
    torch.manual_seed(9)
    one = Int8Synthesis(_deconv(16, 3))  # its one layer multiplies the 16-bit input by columns
    one.calibrate(torch.randn(2, 16, 6, 7) * 3)
    program = Int8SynthesisProgram.from_module(one)
    # Its sums of 16-bit inputs could pass 2^24 (where they are seen, they mostly saturate the output
    # anyway): its bound is taken with the 16-bit range, so it multiplies in float64.
    assert Int8FloatProgram(program).steps[0].dtype == torch.float64
    y = _fixed(torch.randn(1, 16, 8, 9, generator=g) * 4)
    assert torch.equal(program.run(y), _reference(program, y))


def test_taps_whose_sums_could_pass_the_float32_limit_are_summed_in_runs(monkeypatch):
    program = Int8SynthesisProgram.from_module(_synthesis(seed=5))
    middle = program.layers[2]  # 12 → 8 channels, 3×3, 3×2, 2×3 and 2×2 taps per phase
    one_tap = max(float(middle.weight[:, :, ky, kx].double().abs().sum(0).max())
                  for ky in range(5) for kx in range(5)) * ACT_TOP
    monkeypatch.setattr(int8_float, "FLOAT32_EXACT_LIMIT", 2.5 * one_tap)  # as if weights were ~2^24 / 2.5
    on_floats = Int8FloatProgram(program)
    step = on_floats.steps[1]
    assert step.dtype == torch.float32 and step.runs > 1  # runs of taps, not float64
    for phase in step.phases:  # every run's sums below the (patched) limit, and the runs cover the taps
        assert phase.groups[0][0] == 0 and phase.groups[-1][1] == len(phase.weights)
        assert all(a[1] == b[0] for a, b in zip(phase.groups, phase.groups[1:]))
        for start, stop in phase.groups:
            run = sum(phase.weights[j].double().abs().sum(1) for j in range(start, stop))
            assert float(run.max()) * ACT_TOP < int8_float.FLOAT32_EXACT_LIMIT
    g = torch.Generator().manual_seed(11)
    for h, w in [(5, 7), (1, 3)]:
        y = _fixed(torch.randn(1, 16, h, w, generator=g) * 4)
        assert torch.equal(on_floats.run(y), _reference(program, y))


def test_a_layout_the_float_path_does_not_take_decodes_by_the_int_path(monkeypatch):
    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")
    torch.manual_seed(10)
    s = Int8Synthesis(_deconv(16, 8), SimplifiedGDN(8, True), SimplifiedGDN(8, True), _deconv(8, 3))
    s.calibrate(torch.randn(2, 16, 6, 7) * 3)
    program = Int8SynthesisProgram.from_module(s)
    with pytest.raises(ValueError):
        Int8FloatProgram(program)
    y = _fixed(torch.randn(1, 16, 3, 4, generator=torch.Generator().manual_seed(1)) * 4)
    assert torch.equal(program.run(y), _reference(program, y))


@pytest.mark.parametrize("pre", [False, True])
def test_the_float_rescaling_gives_the_int32_rescalings_integers(pre):
    g = torch.Generator().manual_seed(7)
    c = 6
    pre_shift = torch.tensor([0, 3, 9, 0, 24, 1], dtype=torch.int32) if pre else torch.zeros(c, dtype=torch.int32)
    rescale = _Rescale(pre_shift, torch.randint(2**13, 2**15, (c,), generator=g, dtype=torch.int32),
                       torch.tensor([1, 7, 15, 22, 13, 20], dtype=torch.int32), ACT_TOP)
    assert rescale.any_pre == pre
    bias = torch.randint(-2**20, 2**20, (c,), generator=g, dtype=torch.int32)
    # Per channel, sums whose results spread over ±300 (so within ±127 and saturated), then the extremes.
    unit = 2.0 ** (rescale.shift + rescale.pre_shift).double() / rescale.multiplier.double()
    target = torch.rand(c, 3000, generator=g, dtype=torch.float64) * 600 - 300
    sums = (target * unit[:, None]).round().clamp(-2**30, 2**30).long() - bias[:, None]
    sums[:, :100] = sums[:, :100] // 2**10 * 2**10  # multiples of powers of two: ties at ½ after shifts
    sums[:, 100] = 2**31 - 1 - 2**20 - 2**24  # as large as the int32 program's sums get, either side
    sums[:, 101] = -sums[:, 100]
    expected = rescale((sums + bias[:, None]).to(torch.int32), channels_first=True)
    got = int8_float._Requantize(rescale, bias)(sums.double(), torch.empty(sums.shape, dtype=torch.float64))
    assert torch.equal(got, expected.double())
    assert 0 < int((got.abs() < ACT_TOP).sum()) < got.numel()  # inside the range and saturated, both


def test_training_sees_what_the_decoder_computes():
    """The training forward rounds where the program rounds: its output is the program's up to the few
    rounding ties the fixed-point multipliers move, far closer than the float synthesis is to either."""
    s = _synthesis(seed=4)
    y = torch.round(torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(5)) * 4 * 64) / 64
    program_out = Int8SynthesisProgram.from_module(s).run(_fixed(y)) * 2.0**-ACT_FRAC_BITS
    with torch.no_grad():
        trained = s(y).double()
        float_out = torch.nn.Sequential(*s)(y).double()
    assert (trained - program_out).abs().mean() < 0.1 * (float_out - program_out).abs().mean()


def test_steps_get_gradients_and_calibration_clips_almost_nothing():
    s = _synthesis(seed=6)
    y = torch.randn(2, 16, 6, 7) * 3
    s(y).pow(2).mean().backward()
    assert all(getattr(s, f"log_step{i}").grad.abs().sum() > 0 for i in range(len(s)))
    assert (y.abs() / torch.exp(s.log_step0)[None, :, None, None] > INPUT_TOP).float().mean() < 0.01  # 16 bits at ŷ


def test_a_model_file_keeps_the_program_and_decodes_the_same(tmp_path):
    from vaecodec.api import Codec
    from vaecodec.coding_model import CodingModel

    model = make_tiny_model(seed=1, kind="int8")
    assert isinstance(model.synthesis, Int8SynthesisProgram)
    assert any(k.startswith("s8.") for k in model.tables)
    model.save(tmp_path / "m.pt")
    loaded = CodingModel.load(tmp_path / "m.pt")
    assert loaded.weight_hash == model.weight_hash
    image = smooth_image(70, 90, seed=1)
    data = Codec(model).compress(image, quality=80)
    assert np.array_equal(Codec(loaded).decompress_array(data), Codec(model).decompress_array(data))


def test_tiles_join_without_seams():
    from vaecodec.api import Codec

    codec = Codec(make_tiny_model(seed=2, kind="int8"))
    image = smooth_image(150, 170, seed=2)
    data = codec.compress(image, quality=60)
    whole = codec.decompress_array(data)
    codec.model.synthesis_tile = 3  # latents per tile: many tiles, each with its halo
    assert np.array_equal(codec.decompress_array(data), whole)


def test_fork_keeps_the_weights_and_trains_on(tmp_path):
    from vaecodec.model import ModelConfig
    from vaecodec.training import anneal, load_checkpoint, train
    from vaecodec.training.int8 import fork_int8_synthesis

    from test_training import FAST, TINY_CB

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(256, 264, seed=i)).save(folder / f"{i}.png")
    stable, forked, annealed = tmp_path / "s.pt", tmp_path / "f.pt", tmp_path / "a.pt"
    quiet = dict(options=FAST, log=lambda *_: None)
    train(folder, stable, config=ModelConfig(**TINY_CB), steps=3, **quiet)
    fork_int8_synthesis(stable, forked, folder, crops=2, log=lambda *_: None)
    with pytest.raises(ValueError, match="exists"):
        fork_int8_synthesis(stable, forked, folder, crops=2, log=lambda *_: None)
    before = load_checkpoint(stable)
    state, model, _, opt = load_checkpoint(forked)
    assert state.config.synthesis_bits == 8 and state.step == before[0].step and state.phase == "stable"
    old = before[1].state_dict()
    assert all(torch.equal(v, old[k]) for k, v in model.state_dict().items() if "log_step" not in k)
    steps = [getattr(model.synthesis, f"log_step{i}") for i in range(len(model.synthesis))]
    assert all(torch.isfinite(s).all() and s.std() > 0 for s in steps)  # calibrated, per channel
    # Adam's statistics follow the parameters by name.
    names = [n for n, _ in model.named_parameters()]
    old_names = [n for n, _ in before[1].named_parameters()]
    j, i = names.index("analysis.0.weight"), old_names.index("analysis.0.weight")
    assert torch.equal(opt["state"][j]["exp_avg_sq"], before[3]["state"][i]["exp_avg_sq"])
    assert train(folder, forked, steps=2, **quiet).step == state.step + 2
    assert anneal(folder, forked, annealed, 2, **quiet).config.synthesis_bits == 8


def test_forking_an_annealed_float_model_takes_its_ema(tmp_path):
    """The short quantization-aware fine-tune of a finished model: fork its EMA, anneal the fork again."""
    from vaecodec.model import ModelConfig
    from vaecodec.training import anneal, load_checkpoint, train
    from vaecodec.training.int8 import fork_int8_synthesis

    from test_training import FAST, TINY_CB

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(smooth_image(256, 264, seed=3)).save(folder / "a.png")
    stable, annealed, forked, tuned = (tmp_path / f"{n}.pt" for n in ("s", "a", "f", "t"))
    quiet = dict(options=FAST, log=lambda *_: None)
    train(folder, stable, config=ModelConfig(**TINY_CB), steps=2, **quiet)
    anneal(folder, stable, annealed, 3, **quiet)
    fork_int8_synthesis(annealed, forked, folder, crops=1, log=lambda *_: None)
    state, model, _, _ = load_checkpoint(forked)
    ema = load_checkpoint(annealed)[2].state_dict()
    assert state.phase == "stable" and state.config.synthesis_bits == 8
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items() if "log_step" not in k)
    low = dataclasses.replace(FAST, lr=1e-4)
    assert anneal(folder, forked, tuned, 2, options=low, log=lambda *_: None).step == state.step + 2


def test_cli_fork_refuses_an_existing_output(tmp_path, tiny_model_file):
    out = tmp_path / "out.pt"
    out.write_bytes(b"keep")
    r = subprocess.run([sys.executable, "-m", "vaecodec", "fork-int8", str(tiny_model_file), str(out), "--data",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and out.read_bytes() == b"keep"


@pytest.mark.parametrize("damage", ["minus 128", "wide weight", "short shift", "no gamma", "huge pre-shift", "int32 bias"])
def test_damaged_tables_are_refused(damage):
    tables = {k: v.copy() for k, v in Int8SynthesisProgram.from_module(_synthesis(seed=7)).tables().items()}
    if damage == "minus 128":
        tables["s8.0.weight"].flat[5] = -128
    elif damage == "wide weight":
        tables["s8.2.weight"] = tables["s8.2.weight"][:, :, :, :4]
    elif damage == "short shift":
        tables["s8.1.shift"] = tables["s8.1.shift"][:1]
    elif damage == "no gamma":
        del tables["s8.3.gamma"]
    elif damage == "huge pre-shift":
        tables["s8.1.pre_shift"][:] = 40
    else:
        tables["s8.0.bias"] = tables["s8.0.bias"].astype(np.int64) + 2**40
    with pytest.raises(ValueError):
        Int8SynthesisProgram.from_tables(tables)


def test_a_silent_channel_still_exports():
    s = _synthesis(seed=8)
    with torch.no_grad():
        s[2].weight[:, 3] = 0  # output channel 3 of the second layer: its bias alone
        s.log_step0[2] = -40.0  # and a step far below the rest
    s.calibrate(torch.randn(2, 16, 6, 7) * 3)
    with torch.no_grad():
        s[2].weight[:, 3] = 0
    y = _fixed(torch.randn(1, 16, 4, 4) * 4)
    program = Int8SynthesisProgram.from_module(s)
    assert torch.equal(program.run(y), _reference(program, y))
