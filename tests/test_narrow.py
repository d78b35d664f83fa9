"""The narrow programs (vaecodec.narrow: 10-bit latents, 11-bit synthesis): the integers they define, on float32
products, exactly."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vaecodec.coding_model import CodingModel
from vaecodec.errors import ModelFileError
from vaecodec.fixedpoint import ACT_FRAC_BITS, ACT_LIMIT
from vaecodec.model import SimplifiedGDN
from vaecodec.narrow import ACT_TOP, EXPONENT_LIMIT, SYNTHESIS_BITS, NarrowProgram, exponents_for_peaks

from conftest import make_tiny_model


def _reference(program: NarrowProgram, a: torch.Tensor) -> torch.Tensor:
    """The program's integers by torch's float64 convolutions of its integer weights (every sum an integer
    below 2^53: exact), one point after another as the module docstring defines them."""
    top = program.top
    v = torch.floor(a * program._input_scale + 0.5).clamp(-top, top)
    for conv in program.convs:
        if conv.transposed:
            s = F.conv_transpose2d(v, conv.weight.transpose(0, 1), None, conv.stride, conv.padding, conv.stride - 1)
        else:
            s = F.conv2d(v, conv.weight, None, 1, conv.k // 2)
        v = torch.floor((s + conv.bias[None, :, None, None]) * conv.scale[None, :, :, None] + 0.5)
        v = v.clamp(conv.low, conv.high)
        if conv.norm is not None:  # N = β̃ + Σ Γ̃·|v|; floor(v·N·2^p + ½)
            g = conv.norm
            norm = F.conv2d(v.abs(), g.gamma[:, :, None, None]) + g.beta[None, :, :, None]
            v = torch.floor(v * norm * g.scale[None, :, :, None] + 0.5).clamp(-top, top)
    return v


def _calibrated(seq: nn.Sequential, x: torch.Tensor, headroom: float = 1.0, per_channel: bool = True,
                bits: int = 10, act_bits: int | None = None) -> NarrowProgram:
    peaks, a = [], x
    with torch.no_grad():
        for m in seq:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, SimplifiedGDN)):
                p = a.abs().amax((0, 2, 3))
                peaks.append(p if per_channel else p.max().expand(len(p)))
            a = m(a)
    exponents = [exponents_for_peaks(p, headroom, act_bits or bits) for p in peaks]
    return NarrowProgram.from_sequential(seq, exponents, bits, act_bits)


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
    runs = [len(c.phases[0][-1]) for c in (nonnegative, signed)]
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
    assert model.config.synthesis_bits == 0
    done = script(tmp_path / "base.pt", tmp_path / "both.pt", "--data", data, "--images", 2, "--model-id", "tiny-s",
                  "--synthesis")
    assert done.returncode == 0, done.stderr
    both = CodingModel.load(tmp_path / "both.pt")
    assert (both.config.latent_bits, both.config.synthesis_bits) == (10, 11)
    assert {k for k in both.tables if k.startswith("n10.")} == {k for k in model.tables if k.startswith("n10.")}
    done = script(tmp_path / "base.pt", tmp_path / "wide.pt", "--data", data, "--images", 2, "--model-id", "tiny-w",
                  "--synthesis", 12)
    assert done.returncode == 0, done.stderr
    assert CodingModel.load(tmp_path / "wide.pt").config.synthesis_bits == 12
    for args, error in (((tmp_path / "base.pt", out), "exists"),
                        ((out, tmp_path / "base.pt", "--force"), "OUTPUT is MODEL or the model file it names"),
                        ((tmp_path / "base.pt", tmp_path / "new.pt", "--images", 0), "at least 1")):
        refused = script(*args, "--data", data, "--model-id", "x")
        assert refused.returncode != 0 and error in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "new.pt").exists() and CodingModel.load(tmp_path / "base.pt").weight_hash == base.weight_hash


def _synthesis_like(seed: int, trained: bool = True, cin: int = 6, hidden: int = 10) -> nn.Sequential:
    """The synthesis' shape in small: transposed convolutions, inverse GDNs, 3 outputs. ``trained``: a GDN's
    Γ spread and β of its size; else as a new model starts them (Γ = 0.1·I, β = 1: a norm that is nearly β)."""
    torch.manual_seed(seed)
    seq = nn.Sequential(nn.ConvTranspose2d(cin, hidden, 5, 2, 2, output_padding=1), SimplifiedGDN(hidden, inverse=True),
                        nn.ConvTranspose2d(hidden, hidden, 5, 2, 2, output_padding=1), SimplifiedGDN(hidden, inverse=True),
                        nn.ConvTranspose2d(hidden, 3, 5, 2, 2, output_padding=1))
    if trained:
        with torch.no_grad():
            for m in (seq[1], seq[3]):
                m.beta.uniform_(0.3, 2.0)
                m.gamma.uniform_(-0.1, 0.4)  # some zeros after the clamp
    return seq.half().float()


@pytest.mark.parametrize("act_bits", [11, 12])
@pytest.mark.parametrize("trained", [True, False])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (4, 2)])
def test_synthesis_program_equals_its_integer_definition(trained, size, act_bits):
    """Transposed convolutions with inverse GDNs after them (norms in float32 with the rescaling and β folded
    in), and a 3-output last layer by columns: the integers of the definition, and the float network to the
    precision of 11 bits."""
    seq = _synthesis_like(2, trained)
    x = torch.randn(1, 6, *size) * 3
    program = _calibrated(seq, x, bits=SYNTHESIS_BITS, act_bits=act_bits)
    assert program.top == 2**(act_bits - 1) - 1 and [c.norm is not None for c in program.convs] == [True, True, False]
    assert all(float(c.weight.abs().max()) <= 1024 for c in program.convs)  # 11-bit weights either way
    assert program.convs[-1].columns is not None
    peaks = [c.norm.gamma.amax(1) for c in program.convs[:2]]
    assert max(float(c.norm.beta.max()) for c in program.convs[:2]) < 2**20
    if not trained:  # Γ = 0.1·I is tiny beside β = 1 at small input steps: rows capped so that β̃ stays below 2^20
        assert any(bool((p < 512).any()) for p in peaks)
    a = torch.round(x.double() * 2**ACT_FRAC_BITS)
    out = program.run(a)
    assert out.shape == (1, 3, 8 * size[0], 8 * size[1])
    assert torch.equal(out, _reference(program, a))
    with torch.no_grad():
        exact = seq.double()(x.double()) * 2**ACT_FRAC_BITS
    assert float((out - exact).abs().max()) <= 0.01 * float(exact.abs().max()) + 2


def test_synthesis_program_bands_and_float64_products_give_the_same_integers(monkeypatch):
    """Band by band (several bands of output rows, a last band cut short) and with float64 products (where a
    user lowered float32 ones): the same integers."""
    import vaecodec.narrow as narrow

    seq = _synthesis_like(3)
    x = torch.randn(1, 6, 7, 5) * 3
    program = _calibrated(seq, x, bits=SYNTHESIS_BITS)
    a = torch.round(x.double() * 2**ACT_FRAC_BITS)
    expected = _reference(program, a)
    monkeypatch.setattr(narrow, "BAND_POSITIONS", 3 * 9)  # three rows of the first layer's padded input a band
    monkeypatch.setattr(narrow, "COLUMN_POSITIONS", 2 * 20)
    assert torch.equal(program.run(a), expected)
    monkeypatch.setattr(narrow, "float32_products_exact", lambda: False)
    assert torch.equal(program.run(a), expected)


def test_runs_are_cut_at_the_inputs_own_peaks_and_stay_exact():
    """Weights whose sums at the bound ACT_TOP need several float32 runs: an input that stays small needs
    fewer (cut at its own largest |value| per channel), one at the bound as many; both give the exact sums."""
    w = (1 - 2.0**-10) * 2.0**-6  # folded with the input step 2^-7 it rounds to 1023 at 11 bits
    conv = nn.Conv2d(64, 4, 3, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(w)
    exponents = torch.full((64,), -7)
    program = NarrowProgram.from_sequential(nn.Sequential(conv), [exponents], SYNTHESIS_BITS)
    layer = program.convs[0]
    assert float(layer.weight.abs().max()) == 1023 and layer.dynamic
    static = len(layer.phases[0][-1])
    for value in (1023, 100, 3):
        x = torch.full((64, 5, 6), float(value))
        runs = len(layer._plan(x)[0][-1])
        assert (runs == static) if value == 1023 else (runs < static), (value, runs, static)
        a = x[None].double() * 2.0**(ACT_FRAC_BITS - 7)
        assert torch.equal(program.run(a), _reference(program, a))


def test_the_rescaling_joins_the_products_only_where_it_fits_float32():
    """Between points the rescaling (2^p ≤ ½) and the bias ride in the float32 products; a bias too large
    for them (or 2^p > ½) is rounded in float64 after: the same integers either way."""
    torch.manual_seed(5)
    seq = nn.Sequential(nn.Conv2d(5, 7, 3, 1, 1), nn.ReLU(), nn.Conv2d(7, 4, 1, 1, 0)).half().float()
    x = torch.randn(1, 5, 6, 4)
    small = _calibrated(seq, x, bits=SYNTHESIS_BITS)
    with torch.no_grad():
        seq[0].bias.mul_(2.0**14)  # b̃ past 2^22 units
    large = _calibrated(seq, x, bits=SYNTHESIS_BITS)
    assert small.convs[0].fused and not large.convs[0].fused and not small.convs[1].fused  # (the output layer)
    a = torch.round(x.double() * 2**ACT_FRAC_BITS)
    for program in (small, large):
        assert torch.equal(program.run(a), _reference(program, a))


def test_narrow_programs_take_only_what_they_define():
    seq = _synthesis_like(1)
    exps = [torch.zeros(n, dtype=torch.long) for n in (6, 10, 10, 10, 10)]
    with pytest.raises(ValueError, match="bits"):
        NarrowProgram.from_sequential(seq, exps, 12)
    for bits, act_bits in ((10, 12), (11, 13), (11, 10)):  # activations as wide as the weights, or one bit more
        with pytest.raises(ValueError, match="activations"):
            NarrowProgram.from_sequential(seq, exps, bits, act_bits)
    with pytest.raises(TypeError, match="right after a convolution"):
        NarrowProgram.from_sequential(nn.Sequential(nn.Conv2d(3, 3, 1), SimplifiedGDN(3, inverse=True),
                                                    SimplifiedGDN(3, inverse=True), nn.Conv2d(3, 3, 1)),
                                      [torch.zeros(3, dtype=torch.long)] * 4, SYNTHESIS_BITS)
    with pytest.raises(TypeError, match="ReLU right after a convolution"):
        NarrowProgram.from_sequential(nn.Sequential(nn.Conv2d(3, 3, 1), SimplifiedGDN(3, inverse=True), nn.ReLU(),
                                                    nn.Conv2d(3, 3, 1)), [torch.zeros(3, dtype=torch.long)] * 3,
                                      SYNTHESIS_BITS)
    with pytest.raises(TypeError, match="right after a convolution"):  # a forward GDN (the encoder's)
        NarrowProgram.from_sequential(nn.Sequential(nn.Conv2d(3, 3, 1), SimplifiedGDN(3), nn.Conv2d(3, 3, 1)),
                                      [torch.zeros(3, dtype=torch.long)] * 3, SYNTHESIS_BITS)


def test_a_narrow_model_decodes_its_synthesis_as_the_11_bit_program(narrow_model):
    plain = make_tiny_model(kind="channel", model_id="tiny-narrow")
    assert narrow_model.config.synthesis_bits == 11 and isinstance(narrow_model.synthesis, NarrowProgram)
    assert narrow_model.synthesis.top == 1023 and any(k.startswith("n11.synthesis.") for k in narrow_model.tables)
    rng = np.random.default_rng(1)
    y_hat = torch.round(torch.from_numpy(rng.normal(0, 2, (1, plain.config.latent_channels, 3, 5))) * 2**ACT_FRAC_BITS)
    a, b = narrow_model.synthesize(y_hat).astype(int), plain.synthesize(y_hat).astype(int)
    assert a.shape == b.shape == (48, 80, 3) and np.abs(a - b).mean() < 2  # 11-bit rounding of the same network
    with pytest.raises(ValueError, match="narrow program tables are"):
        plain.with_narrow_programs({"n13.synthesis.0": np.zeros(3, np.int64)}, "x")


def test_integers_follow_from_the_float_layers_and_exponents():
    """The definition, derived here independently of the module (math.frexp per row, Python floats): a
    convolution's w̃, b̃ and rescaling power, an inverse GDN's Γ̃, β̃ (its capped and zero rows) and power."""
    import math

    torch.manual_seed(6)
    conv = nn.ConvTranspose2d(3, 4, 5, 2, 2, output_padding=1).half().float()
    gdn = SimplifiedGDN(4, inverse=True)
    with torch.no_grad():
        gdn.beta.copy_(torch.tensor([0.5, 1.5, 3.0, 1.0]))
        gdn.gamma.copy_(torch.tensor([[0.3, 0.0, 0.1, 0.2], [0.0, 0.0, 0.0, 0.0], [1e-9, 0.0, 0.0, 0.0],
                                      [0.05, 0.4, 0.0, 0.25]]))
    e_in, e_mid, e_out = torch.tensor([-5, -6, -4]), torch.tensor([-7, -8, -6, -7]), torch.tensor([-6, -6, -5, -7])
    seq = nn.Sequential(conv, gdn, nn.ConvTranspose2d(4, 3, 5, 2, 2, output_padding=1).half().float())
    program = NarrowProgram.from_sequential(seq, [e_in, e_mid, e_out], SYNTHESIS_BITS)
    c, g = program.convs[0], program.convs[0].norm
    w = conv.weight.detach().double()  # (in, out, k, k)
    for o in range(4):
        folded = [[[float(w[i, o, y, x]) * 2.0 ** int(e_in[i]) for x in range(5)] for y in range(5)] for i in range(3)]
        peak = max(abs(v) for plane in folded for row in plane for v in row)
        k = 10 - math.frexp(peak)[1]
        assert float(c.bias[o]) == round(float(conv.bias.detach()[o]) * 2.0**k)
        assert float(c.scale[o, 0]) == 2.0 ** (-k - int(e_mid[o]))
        for i in range(3):
            assert [float(v) for v in c.weight[o, i].flatten()] == [round(v * 2.0**k) for row in folded[i] for v in row]
        beta = float(gdn.beta.detach()[o])
        row = [float(gdn.gamma.detach()[o, i]) * 2.0 ** int(e_mid[i]) for i in range(4)]
        k_beta = 10 - math.frexp(beta)[1]
        k = k_beta if max(row) == 0 else min(10 - math.frexp(max(row))[1], k_beta + 10)
        assert [float(v) for v in g.gamma[o]] == [round(v * 2.0**k) for v in row]
        assert float(g.beta[o, 0]) == round(beta * 2.0**k)
        assert float(g.scale[o, 0]) == 2.0 ** (int(e_mid[o]) - k - int(e_out[o]))
    assert float(g.gamma[1].abs().max()) == 0 and 512 <= float(g.beta[1, 0]) < 1024  # a row of zeros: β's step
    assert 2**19 <= float(g.beta[2, 0]) < 2**20 and float(g.gamma[2].max()) < 512  # capped: Γ tiny beside β


def test_a_layer_between_points_with_its_rescaling_in_the_products_cuts_runs_at_its_input():
    """A layer between points takes its rescaling and bias into its float32 products (the offset a column of the
    first run) and, at weights that need several runs at the bound, cuts them at its input's peaks: the
    integers of the definition either way, and the ReLU after it keeps the next layer's signed bound honest."""
    torch.manual_seed(9)
    first, second = nn.Conv2d(64, 4, 3, 1, 1), nn.Conv2d(4, 2, 1, 1, 0)
    with torch.no_grad():
        first.weight.fill_((1 - 2.0**-10) * 2.0**-6)  # w̃ = 1023 at the input step 2^-7
        first.bias.fill_(0.01)  # b̃ = 0.01·2^23: with the half 2^19, below 2^22 units
    seq = nn.Sequential(first, nn.ReLU(), second).half().float()
    program = NarrowProgram.from_sequential(seq, [torch.full((64,), -7), torch.full((4,), -3)], SYNTHESIS_BITS)
    layer = program.convs[0]
    assert layer.fused and layer.dynamic and len(layer.phases[0][-1]) > 1
    for value in (1023, 20):
        x = torch.full((64, 4, 5), float(value))
        x[::3] *= -1
        assert len(layer._plan(x)[0][-1]) == (len(layer.phases[0][-1]) if value == 1023 else 1)
        a = x[None].double() * 2.0**(ACT_FRAC_BITS - 7)
        assert torch.equal(program.run(a), _reference(program, a))


def test_checkerboard_positions_cut_runs_at_their_input_too():
    """The checkerboard context's runs, like a whole convolution's, are cut again at the input's peaks: the same
    integers as the whole convolution at those positions, at the bound and far below it."""
    conv = nn.Conv2d(96, 3, 5, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_((1 - 2.0**-9) * 2.0**-6)  # w̃ = 511 at the input step 2^-7
    program = NarrowProgram.from_sequential(nn.Sequential(conv), [torch.full((96,), -7)])
    h, w = 5, 6
    colour = (torch.arange(h)[:, None] + torch.arange(w)[None]) % 2 == 0
    positions = (~colour).reshape(-1).nonzero().squeeze(1)
    for value in (511, 9):
        a = torch.full((1, 96, h, w), value * 2.0**(ACT_FRAC_BITS - 7), dtype=torch.float64) * colour
        a[:, ::2] *= -1
        whole = program.run(a).reshape(1, 3, -1)[:, :, positions]
        assert torch.equal(program.at_checkerboard(a, positions), whole)
    taps, weights, _, static = program.convs[0]._checkerboard[1]
    assert len(static) > 1  # at the bound: several runs (checked exact above), at 9 one
    from vaecodec.narrow import _runs
    assert len(_runs(weights, torch.full((weights.shape[1],), 9.0, dtype=torch.float64))) == 1


@pytest.mark.parametrize("checkerboard", [False, True])
def test_runs_cut_at_peaks_follow_the_columns_channel_and_tap_order(checkerboard):
    """Some channels at the bound, the rest silent: each call's runs must give each column its own channel's
    peak (tap-major columns in a whole convolution, channel-major at the checkerboard's positions); with
    another channel's peak a run would hold more than 2^24 of real sums and round (odd products of 511²)."""
    conv = nn.Conv2d(96, 2, 5, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_((1 - 2.0**-9) * 2.0**-6)  # w̃ = 511 at the input step 2^-7
    program = NarrowProgram.from_sequential(nn.Sequential(conv), [torch.full((96,), -7)])
    _raw_sums(program)
    h, w = 5, 6
    x = torch.zeros(1, 96, h, w, dtype=torch.float64)
    x[:, :40] = 511 * 2.0**(ACT_FRAC_BITS - 7)  # channels 0–39 at the bound
    colour = (torch.arange(h)[:, None] + torch.arange(w)[None]) % 2 == 0
    a = x * colour if checkerboard else x
    whole = F.conv2d(torch.floor(a * program._input_scale + 0.5), program.convs[0].weight, None, 1, 2)
    assert float(whole.abs().max()) > 2**24
    if not checkerboard:
        assert torch.equal(program.run(a), whole)
        return
    positions = (~colour).reshape(-1).nonzero().squeeze(1)
    assert torch.equal(program.at_checkerboard(a, positions), whole.reshape(1, 2, -1)[:, :, positions])


def test_a_model_may_take_12_bit_activations_in_its_synthesis(tmp_path, narrow_model):
    """``synthesis_bits`` 12: the synthesis with 11-bit weights and 12-bit activations (tables n12.synthesis.*,
    calibrated as the 11-bit ones at one more bit), replacing the 11-bit tables; its own weight hash; saved
    and loaded as a derived file; the same network to the precision of its bits."""
    import tempfile

    from PIL import Image

    from vaecodec.training.narrow_calibration import synthesis_exponents

    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.png"
        Image.fromarray(np.clip(np.cumsum(rng.integers(-6, 7, (72, 80, 3)), 1) + 128, 0, 255).astype(np.uint8)).save(path)
        tables = synthesis_exponents(narrow_model.float_network(), [path], act_bits=12)
    assert set(tables) == {k.replace("n11.", "n12.") for k in narrow_model.tables if k.startswith("n11.")}
    wide = narrow_model.with_narrow_programs(tables, "tiny-n12")
    assert (wide.config.latent_bits, wide.config.synthesis_bits) == (10, 12) and wide.synthesis.top == 2047
    assert not any(k.startswith("n11.") for k in wide.tables) and wide.weight_hash != narrow_model.weight_hash
    base = make_tiny_model(kind="channel", model_id="tiny-narrow")
    base.save(tmp_path / "base.pt")
    wide.save(tmp_path / "wide.pt", base=tmp_path / "base.pt")
    assert CodingModel.load(tmp_path / "wide.pt").weight_hash == wide.weight_hash
    y_hat = torch.round(torch.from_numpy(rng.normal(0, 2, (1, base.config.latent_channels, 3, 5))) * 2**ACT_FRAC_BITS)
    a, b = wide.synthesize(y_hat).astype(int), base.synthesize(y_hat).astype(int)
    assert np.abs(a - b).mean() < 2
    with pytest.raises(ValueError, match="narrow program tables"):
        base.with_narrow_programs({**tables, "n11.synthesis.0": tables["n12.synthesis.0"]}, "x")  # both widths
