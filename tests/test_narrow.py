"""The 10-bit latent programs (vaecodec.narrow): the integers they define, on float32 products, exactly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaecodec.coding_model import CodingModel
from vaecodec.errors import ModelFileError
from vaecodec.fixedpoint import ACT_FRAC_BITS, ACT_LIMIT
from vaecodec.narrow import ACT_TOP, EXPONENT_LIMIT, NarrowProgram, exponents_for_peaks

from conftest import make_tiny_model


def _reference(program: NarrowProgram, a: torch.Tensor) -> torch.Tensor:
    """The program's integers by torch's float64 convolutions of its integer weights (every sum an integer
    below 2^53: exact), one point after another as the module docstring defines them."""
    v = torch.floor(a * program._input_scale + 0.5).clamp(-ACT_TOP, ACT_TOP)
    for conv in program.convs:
        if conv.transposed:
            s = F.conv_transpose2d(v, conv.weight.transpose(0, 1), None, conv.stride, conv.k // 2, conv.stride - 1)
        else:
            s = F.conv2d(v, conv.weight, None, 1, conv.k // 2)
        v = torch.floor((s + conv.bias[None, :, None, None]) * conv.scale[None, :, :, None] + 0.5)
        v = v.clamp(conv.low, conv.high)
    return v


def _calibrated(seq: nn.Sequential, x: torch.Tensor, headroom: float = 1.0, per_channel: bool = True) -> NarrowProgram:
    peaks, a = [], x
    with torch.no_grad():
        for m in seq:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                p = a.abs().amax((0, 2, 3))
                peaks.append(p if per_channel else p.max().expand(len(p)))
            a = m(a)
    return NarrowProgram.from_sequential(seq, [exponents_for_peaks(p, headroom) for p in peaks])


def _hyper_like(seed: int, cin: int = 6, hidden: int = 10, cout: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    seq = nn.Sequential(nn.ConvTranspose2d(cin, hidden, 5, 2, 2, output_padding=1), nn.ReLU(),
                        nn.ConvTranspose2d(hidden, hidden, 5, 2, 2, output_padding=1), nn.ReLU(),
                        nn.Conv2d(hidden, cout, 3, 1, 1))
    return seq.half().float()  # the weights a model file holds


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (6, 4)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_program_equals_its_integer_definition(size, per_channel):
    seq = _hyper_like(1)
    x = torch.randn(1, 6, *size) * 4
    program = _calibrated(seq, x, per_channel=per_channel)
    a = torch.round(x.double() * 2**ACT_FRAC_BITS)
    out = program.run(a)
    assert out.dtype == torch.float64 and out.shape == (1, 8, 4 * size[0], 4 * size[1])
    assert torch.equal(out, _reference(program, a))
    # and it computes the float network, to the precision of 10 bits
    with torch.no_grad():
        float_out = seq(x) * 2**ACT_FRAC_BITS
    assert float((out - float_out).abs().max()) < 0.05 * float(float_out.abs().max())


def test_saturating_inputs_and_outputs_clamp_as_defined():
    seq = _hyper_like(2)
    program = _calibrated(seq, torch.randn(1, 6, 4, 4), headroom=0)
    a = torch.round(torch.randn(1, 6, 4, 5, dtype=torch.float64) * 2**(ACT_FRAC_BITS + 6))  # far past the peaks
    a[0, 0, 0, 0] = ACT_LIMIT
    assert torch.equal(program.run(a), _reference(program, a))


def _raw_sums(program: NarrowProgram) -> None:
    """Let the program return its convolutions' integer sums (bias 0 here) instead of their rounding."""
    for conv in program.convs:
        conv.requantize = lambda sums: sums.double()


def test_wide_layers_sum_in_float32_runs_joined_exactly():
    """Every weight at |w̃| = 511 and every input at 511, one sign: each output sums 301·9 products of 511²,
    far past 2^24 and odd, so one float32 product would round it (checked); cut into float32 runs joined in
    float64, the program's sums are the exact integers."""
    w = (1 - 2.0**-9) * 2.0**-6  # fp16-exact; folded with the input step 2^-7 it rounds to 511
    conv = nn.Conv2d(301, 4, 3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(w)
    x = torch.full((1, 301, 5, 7), 511 / 128)  # at the step 2^-7: 511
    program = _calibrated(nn.Sequential(conv), x, headroom=0, per_channel=False)
    assert float(program.convs[0].weight.abs().min()) == 511 and program.bound_report()[0] == 43  # 64 products a run
    _raw_sums(program)
    a = torch.round(x.double() * 2**ACT_FRAC_BITS)
    exact = F.conv2d(torch.full((1, 301, 5, 7), 511.0, dtype=torch.float64), program.convs[0].weight, None, 1, 1)
    assert float(exact.max()) == 511 * 511 * 301 * 9
    one_float32_product = F.conv2d(torch.full((1, 301, 5, 7), 511.0), program.convs[0].weight.float(), None, 1, 1)
    assert not torch.equal(one_float32_product.double(), exact)  # the test can fail
    assert torch.equal(program.run(a), exact)


def test_runs_after_a_relu_use_the_signed_bound_and_stay_exact():
    """After a ReLU the inputs are 0..511, so a run's bound is the larger of its positive and negative weights'
    sums: about half as many runs. At that bound's extreme (511 on every positive weight's input, 0 on the
    negative ones) the sums still equal the exact integers."""
    from vaecodec.narrow import _Conv, _runs

    w = (1 - 2.0**-9) * 2.0**-6
    conv = nn.Conv2d(202, 3, 1, 1, 0, bias=False)
    signs = torch.tensor([1.0] * 101 + [-1.0] * 101)
    with torch.no_grad():
        conv.weight.copy_((w * signs)[None, :, None, None].expand(3, 202, 1, 1))
    exponents = torch.full((202,), -7)
    nonnegative = _Conv(conv, exponents, None, relu=False, nonnegative_input=True)
    signed = _Conv(conv, exponents, None, relu=False)
    runs = [len(c.phases[0][3]) for c in (nonnegative, signed)]
    assert 1 < runs[0] < runs[1], runs
    assert len(_runs(nonnegative.weight.reshape(3, -1), ACT_TOP, nonnegative=True)) == runs[0]
    program = NarrowProgram([nonnegative], exponents)
    _raw_sums(program)
    x = (signs > 0).double()[None, :, None, None].expand(1, 202, 4, 6) * 511
    exact = F.conv2d(x, nonnegative.weight, None)
    assert float(exact.max()) == 101 * 511 * 511 > 2**24
    assert not torch.equal(F.conv2d(x.float(), nonnegative.weight.float(), None).double(), exact)
    assert torch.equal(program.run(x * 2.0**(ACT_FRAC_BITS - 7)), exact)


def test_products_fall_back_to_float64_where_float32_ones_are_lowered(monkeypatch):
    """A user who lets float32 products run in bfloat16 or TF32 gets the same integers (in float64)."""
    from vaecodec.hardware import float32_products_exact

    seq = _hyper_like(8)
    x = torch.randn(1, 6, 3, 4) * 4
    program = _calibrated(seq, x)
    a = torch.round(x.double() * 2**ACT_FRAC_BITS)
    expected = _reference(program, a)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not float32_products_exact()
        assert torch.equal(program.run(a), expected)
    finally:
        torch.set_float32_matmul_precision(before)
    monkeypatch.setenv("ONEDNN_DEFAULT_FPMATH_MODE", "BF16")
    assert not float32_products_exact()
    assert torch.equal(program.run(a), expected)


@pytest.mark.parametrize("same_colour", [False, True])
@pytest.mark.parametrize("shape", [(6, 8), (5, 7)])
def test_checkerboard_positions_equal_the_whole_convolution(same_colour, shape):
    torch.manual_seed(4)
    conv = nn.Conv2d(10, 6, 5 if not same_colour else 3, 1, 2 if not same_colour else 1).half().float()
    program = _calibrated(nn.Sequential(conv), torch.randn(1, 10, 6, 8))
    h, w = shape
    colour = (torch.arange(h)[:, None] + torch.arange(w)[None]) % 2 == 0  # the anchors
    a = torch.round(torch.randn(1, 10, h, w, dtype=torch.float64) * 2**ACT_FRAC_BITS) * colour
    wanted = colour if same_colour else ~colour
    positions = wanted.reshape(-1).nonzero().squeeze(1)
    whole = program.run(a).reshape(1, 6, -1)[:, :, positions]
    assert torch.equal(program.at_checkerboard(a, positions, same_colour), whole)
    part = positions[3:-2]  # a chunk: partial first and last rows
    assert torch.equal(program.at_checkerboard(a, part, same_colour), whole[:, :, 3:-2])
    assert program.at_checkerboard(a, positions[:0], same_colour).shape == (1, 6, 0)


def test_exponents_put_the_peaks_inside_the_range():
    peaks = torch.tensor([1.0, 0.3, 1000.0, 0.0])
    e = exponents_for_peaks(peaks, headroom=1.0)
    steps = torch.ldexp(torch.ones(4, dtype=torch.float64), e)
    assert bool((2 * peaks[:3] / steps[:3] <= ACT_TOP).all()) and bool((4 * peaks[:3] / steps[:3] > ACT_TOP).all())
    assert int(e[3]) == -EXPONENT_LIMIT


def test_bad_exponents_are_refused():
    seq = _hyper_like(5)
    with pytest.raises(ValueError):
        NarrowProgram.from_sequential(seq, [torch.zeros(6, dtype=torch.long)] * 2)  # one short
    with pytest.raises(ValueError):
        NarrowProgram.from_sequential(seq, [torch.zeros(6, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                                            torch.zeros(10, dtype=torch.long)])  # wrong width
    with pytest.raises(ValueError):
        NarrowProgram.from_sequential(seq, [torch.full((6,), 99), torch.zeros(10, dtype=torch.long),
                                            torch.zeros(10, dtype=torch.long)])  # out of range


@pytest.fixture(scope="module")
def narrow_model():
    return make_tiny_model(kind="narrow", model_id="tiny-narrow")


def test_a_narrow_model_differs_from_its_float64_one_only_in_the_latent_programs(narrow_model):
    plain = make_tiny_model(kind="channel", model_id="tiny-narrow")
    assert narrow_model.config.latent_bits == 10 and narrow_model.weight_hash != plain.weight_hash
    assert isinstance(narrow_model.hyper_synthesis, NarrowProgram)
    assert all(isinstance(p, NarrowProgram) for p in narrow_model.channel_parameters)
    rng = np.random.default_rng(0)  # an image like the ones its steps were calibrated on
    pixels = np.clip(np.cumsum(rng.integers(-6, 7, (1, 3, 64, 128)), 3) + 128, 0, 255)
    _, z = plain.analyze(torch.from_numpy(pixels).float() / 255)
    a, b = narrow_model.hyper_decode(z), plain.hyper_decode(z)
    # the same parameters to within 10-bit rounding
    for narrow, exact in ((a.mean, b.mean), (a.log2_scale, b.log2_scale)):
        assert float((narrow - exact).abs().max()) <= 0.02 * float(exact.abs().max()) + 2


def test_derived_model_file_shares_its_base_weights(tmp_path, narrow_model):
    base = make_tiny_model(kind="channel", model_id="tiny-narrow")  # the same seeded weights
    base_path, path = tmp_path / "base.pt", tmp_path / "narrow.pt"
    base.save(base_path)
    narrow_model.save(path, base=base_path)
    assert path.stat().st_size < base_path.stat().st_size / 4
    loaded = CodingModel.load(path)
    assert loaded.weight_hash == narrow_model.weight_hash and loaded.config.latent_bits == 10
    # a derived file of a derived file, a base elsewhere or of other weights: refused
    with pytest.raises(ValueError):
        narrow_model.save(tmp_path / "again.pt", base=path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError):
        narrow_model.save(tmp_path / "elsewhere" / "n.pt", base=base_path)
    other = make_tiny_model(seed=1, kind="channel", model_id="tiny-narrow")
    other.save(base_path)
    with pytest.raises(ModelFileError, match="its base"):
        CodingModel.load(path)
    base_path.unlink()
    with pytest.raises(ModelFileError, match="no such model file"):
        CodingModel.load(path)


def test_narrow_codec_round_trip_is_bit_exact_across_threads(narrow_model):
    from vaecodec.api import Codec

    codec = Codec(narrow_model)
    rng = np.random.default_rng(7)
    pixels = np.clip(np.cumsum(rng.integers(-9, 10, (37, 70, 3)), 1) + 128, 0, 255).astype(np.uint8)
    data = codec.compress(pixels, quality=60)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = np.asarray(codec.decompress(data))
        torch.set_num_threads(2)
        two = np.asarray(codec.decompress(data))
    finally:
        torch.set_num_threads(before)
    assert one.shape == pixels.shape and np.array_equal(one, two)


def test_damaged_or_misnamed_derived_files_are_refused(tmp_path, narrow_model):
    base = make_tiny_model(kind="channel", model_id="tiny-narrow")
    base_path, path = tmp_path / "base.pt", tmp_path / "narrow.pt"
    base.save(base_path)
    with pytest.raises(ValueError, match="its own base"):
        base.save(base_path, base=base_path)  # would overwrite the weights it names
    assert CodingModel.load(base_path).weight_hash == base.weight_hash
    narrow_model.save(path, base=base_path)
    blob = torch.load(path, weights_only=True)
    for name, error in (("../base.pt", "beside it"), ("/tmp/base.pt", "beside it"), ("sub/base.pt", "beside it"),
                        ("base.npz", "beside it"), ("bad.pt", "beside it"), ("narrow.pt", "hold its weights")):
        torch.save({**blob, "base": {**blob["base"], "file": name}}, tmp_path / "bad.pt")
        with pytest.raises(ModelFileError, match=error):
            CodingModel.load(tmp_path / "bad.pt")
    key = next(k for k in blob["tables"] if k.startswith("n10."))
    damaged = {**blob["tables"], key: blob["tables"][key] + 1}
    torch.save({**blob, "tables": damaged}, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="weight hash"):
        CodingModel.load(tmp_path / "bad.pt")
    torch.save({**blob, "tables": {k: v for k, v in blob["tables"].items() if k != key}}, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="weight hash"):
        CodingModel.load(tmp_path / "bad.pt")
    narrow_model.save(tmp_path / "whole.pt")  # a full file (its weights inside) without one of its tables
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    torch.save({**whole, "tables": {k: v for k, v in whole["tables"].items() if k != key}}, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="n10"):
        CodingModel.load(tmp_path / "bad.pt")
    torch.save({k: v for k, v in blob.items() if k != "base"}, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="damaged"):
        CodingModel.load(tmp_path / "bad.pt")


def test_narrow_latents_script_writes_a_derived_model_and_refuses_to_overwrite(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    root = Path(__file__).resolve().parent.parent
    base = make_tiny_model(kind="channel", model_id="tiny-base")
    base.save(tmp_path / "base.pt")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(np.clip(np.cumsum(rng.integers(-6, 7, (64, 72, 3)), 1) + 128, 0, 255).astype(np.uint8)
                        ).save(data / f"{i}.png")

    def script(*args):
        return subprocess.run([sys.executable, str(root / "bin" / "narrow-latents"), *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    out = tmp_path / "narrow.pt"
    done = script(tmp_path / "base.pt", out, "--data", data, "--images", 2, "--model-id", "tiny-n")
    assert done.returncode == 0, done.stderr
    model = CodingModel.load(out)
    assert model.config.latent_bits == 10 and model.model_id == "tiny-n" and "base" in torch.load(out, weights_only=True)
    for args, error in (((tmp_path / "base.pt", out), "exists"),
                        ((out, tmp_path / "base.pt", "--force"), "OUTPUT is MODEL or the model file it names"),
                        ((tmp_path / "base.pt", tmp_path / "new.pt", "--images", 0), "at least 1")):
        refused = script(*args, "--data", data, "--model-id", "x")
        assert refused.returncode != 0 and error in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "new.pt").exists() and CodingModel.load(tmp_path / "base.pt").weight_hash == base.weight_hash
