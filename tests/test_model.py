"""Model shapes, the training forward pass, and the fixed-point programs."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vaecodec.fixedpoint import ACT_FRAC_BITS, FixedPointProgram, to_fixed
from vaecodec.image import to_model_input
from vaecodec.model import HyperpriorModel, ModelConfig, SimplifiedGDN, build_model, runs_in_bfloat16
from vaecodec.training import rd_loss, sample_lambdas

from conftest import TINY_CONFIG, smooth_image


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return HyperpriorModel(ModelConfig(**TINY_CONFIG))


@pytest.mark.parametrize("h,w", [(1, 1), (17, 31), (65, 257)])
def test_padded_odd_sizes_give_the_expected_latent_shapes(net, tiny_model, h, w):
    x = to_model_input(smooth_image(h, w), 64)
    assert x.shape[2] % 64 == 0 and x.shape[3] % 64 == 0
    y, z = tiny_model.analyze(x)
    y_shape, z_shape = tiny_model.latent_shapes(h, w)
    assert tuple(y.shape) == y_shape and tuple(z.shape) == z_shape
    out = net(x, torch.tensor([0.01]))
    assert out.x_hat.shape == x.shape and out.bits_y.shape == (1,)


def test_a_training_step_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = HyperpriorModel(ModelConfig(**TINY_CONFIG))
    x = torch.from_numpy(smooth_image(64, 64)).permute(2, 0, 1)[None].float().repeat(2, 1, 1, 1) / 255
    lam = sample_lambdas(model.config, 2, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(100):
        loss, stats = rd_loss(model, model.config, x, lam)
        first = first or stats["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["loss"] < 0.5 * first


def test_gains_interpolate_log_linearly_between_anchors(net):
    lam = torch.tensor(net.config.lambdas[:2])
    mid = torch.sqrt(lam[:1] * lam[1:2])
    g = net.log_gain(torch.cat([lam, mid]))
    assert torch.allclose(g[2], (g[0] + g[1]) / 2, atol=1e-5)


def test_fixed_point_synthesis_tracks_the_float_synthesis(net):
    torch.manual_seed(1)
    y = torch.randn(1, TINY_CONFIG["latent_channels"], 4, 6)
    program = FixedPointProgram.from_sequential(net.synthesis)
    exact = program.run(to_fixed(y)) * 2.0**-ACT_FRAC_BITS
    with torch.no_grad():
        ref = net.synthesis(y).double()
    assert (exact - ref).abs().max() < 1e-2 * ref.abs().max()


def test_fixed_point_outputs_are_integers_identical_across_kernels(net):
    program = FixedPointProgram.from_sequential(net.synthesis)
    a = to_fixed(torch.randn(1, TINY_CONFIG["latent_channels"], 8, 8, generator=torch.Generator().manual_seed(2)))
    outs = []
    for mkldnn, threads in [(True, 2), (False, 1)]:
        torch.backends.mkldnn.enabled = mkldnn
        torch.set_num_threads(threads)
        try:
            outs.append(program.run(a))
        finally:
            torch.backends.mkldnn.enabled = True
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], torch.round(outs[0]))


@pytest.mark.parametrize("cin,cout,kernel,padding,output_padding", [
    (24, 16, 5, 2, 1),  # the decoder's upsampling layers
    (8, 32, 3, 1, 1),
    (8, 16, 4, 1, 0),
    (8, 4, 5, 2, 1),  # too few outputs: torch's kernel is kept
    (256, 128, 5, 2, 1),  # wide and long (≥ 1024 terms a phase): on int8 kernels where the machine has them
])
@pytest.mark.parametrize("kernels", ["int8", "float32"])
def test_transposed_convolutions_by_phases_equal_torchs_kernel_exactly(cin, cout, kernel, padding, output_padding,
                                                                       kernels, monkeypatch):
    from vaecodec.fixedpoint import _IntConv

    monkeypatch.setenv("VAECODEC_INT8_KERNEL", kernels)  # float32: the float64 path, never the int8 kernels
    g = torch.Generator().manual_seed(3)
    layer = _IntConv(weight=torch.randint(-2**14, 2**14, (cin, cout, kernel, kernel), generator=g).double(),
                     bias=torch.randint(-2**30, 2**30, (cout,), generator=g).double(), shift=18, stride=2,
                     padding=padding, output_padding=output_padding, transposed=True)
    assert (layer._taps is None) == (cout < 16)
    assert (layer._taps is not None and layer._taps.digits is not None) == (cout >= 128)
    a = torch.randint(-2**20, 2**20, (2, cin, 5, 7), generator=g).double()  # batch 2, non-square
    a[0, 0, 0, :3] = torch.tensor([2.0**20, -2.0**20, -2.0**20 + 1])  # the extremes: three digits
    ref = F.conv_transpose2d(a, layer.weight, layer.bias, 2, padding, output_padding)
    assert ref.abs().max() > 2**36  # sums far beyond float32's exact range
    out = layer(a.clone())
    assert out.shape == (2, cout, 10, 14)
    assert torch.equal(out, torch.floor(ref * 2.0**-18 + 0.5).clamp(-2**20, 2**20))
    small = (a / 64).round()  # two digits
    assert torch.equal(layer(small), torch.floor(F.conv_transpose2d(small, layer.weight, layer.bias, 2, padding,
                                                                     output_padding) * 2.0**-18 + 0.5).clamp(-2**20, 2**20))


@pytest.mark.parametrize("kernel,padding,output_padding", [(5, 2, 1), (3, 1, 1), (4, 1, 0), (2, 0, 0)])
def test_thin_transposed_convolutions_by_columns_equal_torchs_kernel_exactly(kernel, padding, output_padding):
    from vaecodec.fixedpoint import _IntConv

    g = torch.Generator().manual_seed(6)
    layer = _IntConv(weight=torch.randint(-2**14, 2**14, (6, 3, kernel, kernel), generator=g).double(),
                     bias=torch.randint(-2**30, 2**30, (3,), generator=g).double(), shift=16, stride=2,
                     padding=padding, output_padding=output_padding, transposed=True)
    assert layer._taps is None and layer._upsamples
    a = torch.randint(-2**20, 2**20, (2, 6, 61, 300), generator=g).double()  # bands of 13 rows: five, uneven
    ref = F.conv_transpose2d(a, layer.weight, layer.bias, 2, padding, output_padding)
    assert torch.equal(layer(a.clone()), torch.floor(ref * 2.0**-16 + 0.5).clamp(-2**20, 2**20))


@pytest.mark.parametrize("transposed,kernel,size", [
    (True, 5, (5, 7)),  # the decoder's upsampling: phases of 3×3, 3×2, 2×3 and 2×2 taps; odd sizes
    (True, 5, (6, 8)),
    (True, 5, (13, 3)),  # narrow: with 5 tiles a band, bands of 2 tile rows and a short last one
    (False, 3, (9, 13)),  # the hyper-synthesis' last layer
    (False, 3, (32, 48)),
    (False, 3, (13, 3)),
])
@pytest.mark.parametrize("band_tiles", [512, 5])  # one band; several
def test_winograd_phases_equal_torchs_kernel_exactly(transposed, kernel, size, band_tiles, monkeypatch):
    from vaecodec import fixedpoint
    from vaecodec.fixedpoint import _IntConv

    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")  # the float64 path, where Winograd runs
    monkeypatch.setattr(fixedpoint, "WINOGRAD_MIN_IN_CHANNELS", 8)
    monkeypatch.setattr(fixedpoint, "WINOGRAD_BAND_TILES", band_tiles)
    g = torch.Generator().manual_seed(11)
    cin, cout = 24, 16
    shape = (cin, cout, kernel, kernel) if transposed else (cout, cin, kernel, kernel)
    layer = _IntConv(weight=torch.randint(-2**14, 2**14, shape, generator=g).double(),
                     bias=torch.randint(-2**30, 2**30, (cout,), generator=g).double(), shift=18,
                     stride=2 if transposed else 1, padding=kernel // 2, output_padding=int(transposed),
                     transposed=transposed)
    assert layer._taps.winograd is not None
    a = torch.randint(-2**20, 2**20, (2, cin, *size), generator=g).double()
    a[0, :, 0, :3] = torch.tensor([2.0**20, -2.0**20, -2.0**20 + 1])  # the extremes
    per_input = layer.weight.sum((1, 2, 3)) if transposed else layer.weight.sum((0, 2, 3))
    a[1, :, :2] = 2.0**20 * torch.sign(per_input)[:, None, None]
    ref = (F.conv_transpose2d(a, layer.weight, layer.bias, 2, kernel // 2, 1) if transposed
           else F.conv2d(a, layer.weight, layer.bias, 1, kernel // 2))
    assert ref.abs().max() > 2**37  # sums far beyond float32's exact range
    expected = torch.floor(ref * 2.0**-18 + 0.5).clamp(-2**20, 2**20)
    out = layer(a.clone())
    assert out.dtype == torch.float64 and torch.equal(out, expected)
    # Stored as float32 between layers, from a float32 input: the same integers.
    out = layer(a.float(), torch.float32)
    assert out.dtype == torch.float32 and torch.equal(out.double(), expected)


def test_winograd_upsampling_with_inverse_gdn_equals_the_taps_path(monkeypatch):
    """A program's conv + inverse GDN step gives the same integers by Winograd phases and by taps."""
    from vaecodec import fixedpoint
    from vaecodec.model import SimplifiedGDN

    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")
    torch.manual_seed(12)
    seq = torch.nn.Sequential(torch.nn.ConvTranspose2d(24, 16, 5, 2, 2, 1), SimplifiedGDN(16, inverse=True))
    a = to_fixed(torch.randn(1, 24, 7, 9))
    by_taps = FixedPointProgram.from_sequential(seq)
    monkeypatch.setattr(fixedpoint, "WINOGRAD_MIN_IN_CHANNELS", 8)
    by_winograd = FixedPointProgram.from_sequential(seq)
    assert by_winograd.layers[0]._taps.winograd is not None and by_taps.layers[0]._taps.winograd is None
    out = by_winograd.run(a.clone())
    assert out.dtype == torch.float64 and out.abs().max() > 2**ACT_FRAC_BITS
    assert torch.equal(out, by_taps.run(a.clone()))


def test_programs_store_float32_between_layers_and_return_float64(net):
    """Activations between layers are float32 (exact for |a| ≤ 2^20); what run() returns is float64, as a
    program that stores float64 everywhere computes it."""
    program = FixedPointProgram.from_sequential(net.synthesis)  # convolutions by taps, the last by columns
    assert [step.store for step in program._steps[:-1]] == [torch.float32] * (len(program._steps) - 1)
    assert program._steps[-1].store == torch.float64
    a = to_fixed(torch.randn(1, TINY_CONFIG["latent_channels"], 5, 7, generator=torch.Generator().manual_seed(4)))
    out = program.run(a)
    for step in program._steps:
        step.store = torch.float64
    assert out.dtype == torch.float64 and torch.equal(out, program.run(a))


def test_winograd_phase_takes_2_or_3_wide_rectangles_of_taps_only():
    from vaecodec.winograd import WinogradPhase

    w = torch.ones(4, 6 * 5, dtype=torch.float64)  # 4 outputs, up to 6 taps of 5 inputs
    bias = torch.zeros(4, 1, dtype=torch.float64)

    def phase(offsets):
        return WinogradPhase.of(offsets, w[:, :5 * len(offsets)], bias, 2.0**20, 2.0**53)

    rectangle = phase([(dy, dx) for dy in (-1, 0) for dx in (-1, 0, 1)])
    assert rectangle is not None and (rectangle.ry, rectangle.rx, rectangle.dy0, rectangle.dx0) == (2, 3, -1, -1)
    assert rectangle.weights.shape == (3, 4, 4, 5) and rectangle.log2 == 1
    assert phase([(0, 0)]) is None  # one tap: nothing to save
    assert phase([(0, 0), (0, 1), (1, 0)]) is None  # not a rectangle
    assert phase([(dy, dx) for dy in (0, 1) for dx in (0, 2)]) is None  # a gap between the columns


def test_winograd_is_refused_where_a_sum_could_reach_2_53(monkeypatch):
    from vaecodec import fixedpoint
    from vaecodec.fixedpoint import _IntConv

    monkeypatch.setattr(fixedpoint, "WINOGRAD_MIN_IN_CHANNELS", 8)
    cin = 4096  # 4096 inputs × 9 taps of 2^14 × 2^20 stay below 2^53 by taps, not once transformed (~×28)
    f64 = dict(dtype=torch.float64)
    layer = _IntConv(weight=torch.full((8, cin, 3, 3), 2.0**14, **f64), bias=torch.zeros(8, **f64), shift=30, stride=1,
                     padding=1, output_padding=0, transposed=False)
    assert layer.bound() < 2.0**53 and layer._taps is not None and layer._taps.winograd is None


@pytest.mark.parametrize("cin,cout,kernel", [(12, 8, 3), (120, 128, 3), (40, 128, 1), (6, 5, 5)])
@pytest.mark.parametrize("kernels", ["int8", "float32"])
def test_same_convolutions_by_taps_equal_torchs_kernel_exactly(cin, cout, kernel, kernels, monkeypatch):
    from vaecodec.fixedpoint import _IntConv

    monkeypatch.setenv("VAECODEC_INT8_KERNEL", kernels)
    g = torch.Generator().manual_seed(5)
    layer = _IntConv(weight=torch.randint(-2**14, 2**14, (cout, cin, kernel, kernel), generator=g).double(),
                     bias=torch.randint(-2**30, 2**30, (cout,), generator=g).double(), shift=17, stride=1,
                     padding=kernel // 2, output_padding=0, transposed=False)
    assert layer._taps is not None and (layer._taps.digits is not None) == (cout >= 128 and cin * kernel**2 >= 1024)
    for top in (2**20, 127, 30000):  # three digits, one, two
        a = torch.randint(-top, top + 1, (1, cin, 6, 9), generator=g).double()
        ref = F.conv2d(a, layer.weight, layer.bias, 1, kernel // 2)
        assert torch.equal(layer(a.clone()), torch.floor(ref * 2.0**-17 + 0.5).clamp(-2**20, 2**20))


@pytest.mark.parametrize("transposed", [False, True])
def test_taps_by_bands_of_a_few_rows_equal_torchs_kernel_exactly(transposed, monkeypatch):
    """Bands of two rows, the last one partial, over two images: each band's window of padded input rows is
    refilled (zero rows above and below the image), and rows an earlier band left in it reach no output."""
    from vaecodec import fixedpoint
    from vaecodec.fixedpoint import _IntConv

    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")
    monkeypatch.setattr(fixedpoint, "BAND_POSITIONS", 30)  # padded width 11 or 13: two rows a band
    g = torch.Generator().manual_seed(9)
    cin, cout = 6, 16  # 16: the fewest outputs a transposed layer runs by phases with
    shape = (cin, cout, 5, 5) if transposed else (cout, cin, 5, 5)
    layer = _IntConv(weight=torch.randint(-2**14, 2**14, shape, generator=g).double(),
                     bias=torch.randint(-2**30, 2**30, (cout,), generator=g).double(), shift=17,
                     stride=2 if transposed else 1, padding=2, output_padding=int(transposed), transposed=transposed)
    assert layer._taps is not None and layer._taps.winograd is None
    a = torch.randint(-2**20, 2**20 + 1, (2, cin, 7, 9), generator=g).double()
    if transposed:
        ref = F.conv_transpose2d(a, layer.weight, layer.bias, 2, 2, 1)
    else:
        ref = F.conv2d(a, layer.weight, layer.bias, 1, 2)
    expected = torch.floor(ref * 2.0**-17 + 0.5).clamp(-2**20, 2**20)
    assert torch.equal(layer(a.clone()), expected)
    assert torch.equal(layer(a.float(), torch.float32).double(), expected)  # from and to float32 storage


@pytest.mark.parametrize("parity", [0, 1])
def test_the_channel_context_convolution_reads_its_own_colour_exactly(parity):
    from vaecodec.fixedpoint import _IntConv, conv_of_checkerboard_at

    g = torch.Generator().manual_seed(8)
    layer = _IntConv(weight=torch.randint(-2**14, 2**14, (6, 5, 3, 3), generator=g).double(),
                     bias=torch.randint(-2**30, 2**30, (6,), generator=g).double(), shift=17, stride=1,
                     padding=1, output_padding=0, transposed=False)
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(11), indexing="ij")
    own = (rows + cols) % 2 == parity
    a = torch.randint(-2**20, 2**20, (1, 5, 6, 11), generator=g).double()
    full = layer((a * own).clone())
    positions = own.reshape(-1).nonzero().squeeze(1)
    assert torch.equal(conv_of_checkerboard_at(layer, a * own, positions, same_colour=True)[0], full[0][:, own])
    # The other colour's values are never read: the pass's positions may hold the other pass's ŷ or not.
    assert torch.equal(conv_of_checkerboard_at(layer, a, positions, same_colour=True)[0], full[0][:, own])


def test_the_checkerboard_convolution_refuses_positions_of_both_colours():
    from vaecodec.fixedpoint import _IntConv, conv_of_checkerboard_at

    layer = _IntConv(weight=torch.ones(2, 3, 3, 3, dtype=torch.float64), bias=torch.zeros(2, dtype=torch.float64),
                     shift=0, stride=1, padding=1, output_padding=0, transposed=False)
    with pytest.raises(ValueError, match="one colour"):
        conv_of_checkerboard_at(layer, torch.zeros(1, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_analysis_gdn_in_place_by_bands_equals_its_forward(monkeypatch, dtype):
    """SimplifiedGDN.forward_ on channels-last input (the encoder's analysis) normalizes band by band, a
    last band shorter than the others; NCHW input takes the convolution. Both give forward's values."""
    from vaecodec import model
    from vaecodec.model import SimplifiedGDN

    torch.manual_seed(5)
    gdn = SimplifiedGDN(6)
    with torch.no_grad():
        gdn.gamma.add_(0.05 * torch.rand(6, 6))
        gdn.beta.mul_(torch.rand(6) + 0.5)
    gdn = gdn.to(dtype)
    x = torch.randn(2, 6, 5, 7).to(dtype)
    monkeypatch.setattr(model, "GDN_BAND_POSITIONS", 16)  # 70 positions: bands of 16, the last of 6
    with torch.no_grad():
        expected = gdn(x)
        banded = gdn.forward_(x.clone(memory_format=torch.channels_last))
        plain = gdn.forward_(x.clone())
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-2)
    channels_last = x.clone(memory_format=torch.channels_last)
    with torch.no_grad():
        assert gdn.forward_(channels_last) is channels_last  # in place: x itself holds the result
    torch.testing.assert_close(channels_last, expected, **tolerance)
    assert banded.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(banded, expected, **tolerance)
    torch.testing.assert_close(plain, expected, **tolerance)


def test_synthesis_output_becomes_pixels_exactly_in_place():
    from vaecodec.coding_model import _to_pixels_
    from vaecodec.fixedpoint import ACT_LIMIT, round_shift

    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randint(-ACT_LIMIT, ACT_LIMIT + 1, (5000,), generator=g).double(),
                   torch.arange(-4096.0, 4096.0 * 2), torch.tensor([-ACT_LIMIT, ACT_LIMIT], dtype=torch.float64)])
    expected = round_shift(x * 255.0, ACT_FRAC_BITS).clamp_(0, 255)
    assert torch.equal(_to_pixels_(x), expected) and torch.equal(x, expected)


def test_channel_slices_start_as_the_checkerboard_and_are_checked():
    from vaecodec.model import ChannelCheckerboardModel, CheckerboardModel

    base = dict(channels=8, latent_channels=12, hyper_channels=8, kind="checkerboard", context_channels=8)
    torch.manual_seed(0)
    checkerboard = build_model(ModelConfig(**base))
    grown = build_model(ModelConfig(**base, channel_slices=(2, 4, 6)))
    assert type(checkerboard) is CheckerboardModel and isinstance(grown, ChannelCheckerboardModel)
    assert [c.in_channels for c in grown.channel_context] == [2, 6]
    missing, unexpected = grown.load_state_dict(checkerboard.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("channel_") for k in missing)
    x, lam = torch.rand(2, 3, 64, 128), torch.tensor([0.002, 0.05])
    with torch.no_grad():
        a, b = checkerboard(x, lam, hard=True), grown(x, lam, hard=True)
        assert torch.allclose(a.bits_y, b.bits_y) and torch.equal(a.mse, b.mse)
        for layer in grown.channel_parameters:  # a trained branch moves the rate
            layer[-1].weight.normal_(0, 0.3)
        assert not torch.allclose(grown(x, lam, hard=True).bits_y, a.bits_y)
    cfg = ModelConfig(**base, channel_slices=(2, 4, 6))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert "channel_slices" not in ModelConfig(**base).to_dict()  # older models' dicts (and hashes) unchanged
    for bad in [dict(base, channel_slices=(2, 4, 5)), dict(base, channel_slices=(0, 12)),
                dict(base, kind="hyperprior", channel_slices=(6, 6))]:
        with pytest.raises(ValueError):
            ModelConfig(**bad)


def test_permuting_latent_channels_keeps_the_function():
    from vaecodec.training.warm_start import permute_latent_channels

    cfg = ModelConfig(channels=8, latent_channels=12, hyper_channels=8, kind="checkerboard", context_channels=8)
    torch.manual_seed(1)
    net = build_model(cfg)
    with torch.no_grad():
        net.entropy_parameters[-1].weight.normal_(0, 0.2)
        net.log_gains.add_(torch.randn_like(net.log_gains) * 0.3)
    order = torch.randperm(12)
    permuted = build_model(cfg)
    permuted.load_state_dict(permute_latent_channels(net, order))
    x, lam = torch.rand(1, 3, 64, 64), torch.tensor([0.01])
    with torch.no_grad():
        a, b = net(x, lam, hard=True), permuted(x, lam, hard=True)
        assert torch.allclose(a.bits_y, b.bits_y, rtol=1e-5) and torch.allclose(a.mse, b.mse, rtol=1e-5)
        assert torch.allclose(permuted.analysis(x), net.analysis(x)[:, order], atol=1e-5)


@pytest.mark.parametrize("parity", [0, 1])
def test_the_context_convolution_of_a_checkerboard_is_exact_where_it_is_used(parity):
    from vaecodec.fixedpoint import _IntConv, conv_of_checkerboard_at

    g = torch.Generator().manual_seed(4)
    layer = _IntConv(weight=torch.randint(-2**14, 2**14, (8, 12, 5, 5), generator=g).double(),
                     bias=torch.randint(-2**30, 2**30, (8,), generator=g).double(), shift=18, stride=1,
                     padding=2, output_padding=0, transposed=False)
    rows, cols = torch.meshgrid(torch.arange(7), torch.arange(9), indexing="ij")
    anchors = (rows + cols) % 2 == parity
    a = torch.randint(-2**20, 2**20, (1, 12, 7, 9), generator=g).double() * anchors
    full = layer(a.clone())
    positions = (~anchors).reshape(-1).nonzero().squeeze(1)
    sparse = conv_of_checkerboard_at(layer, a, positions)
    assert torch.equal(sparse[0], full[0][:, ~anchors])
    for part in (slice(5, 9), slice(20, 31), slice(-3, None), slice(2, 4)):  # chunks: only their rows are read
        assert torch.equal(conv_of_checkerboard_at(layer, a, positions[part])[0], full[0][:, ~anchors][:, part])
    # ŷ held as float32 (exact for these integers), and positions in any order: the same values, in that order.
    order = torch.randperm(len(positions), generator=g)
    assert torch.equal(conv_of_checkerboard_at(layer, a.float(), positions[order])[0], full[0][:, ~anchors][:, order])
    with pytest.raises(ValueError):
        conv_of_checkerboard_at(replace(layer, stride=2), a, positions)


def test_layers_without_an_exact_form_are_refused():
    with pytest.raises(TypeError):
        FixedPointProgram.from_sequential(torch.nn.Sequential(torch.nn.Sigmoid()))


def test_weights_that_could_overflow_2_53_are_refused():
    conv = torch.nn.Conv2d(2**17, 1, 5)  # fan-in 2^21.6 · 2^13+ · 2^20 > 2^53
    with pytest.raises(ValueError, match="2\\^53"):
        FixedPointProgram.from_sequential(torch.nn.Sequential(conv))


def test_tiled_decoding_is_identical_to_whole_image_decoding(tiny_model):
    from vaecodec.coding_model import run_tiled

    x = to_model_input(smooth_image(150, 200, seed=9), 64)
    y, z = tiny_model.analyze(x)
    params = tiny_model.hyper_decode(z)
    q = tiny_model.quantize(y, params, 70)
    whole = tiny_model.reconstruct(q, params, 70)
    tiny_model.synthesis_tile = 3  # latents: many tiles, odd sizes at the edges
    try:
        tiled = tiny_model.reconstruct(q, params, 70)
    finally:
        from vaecodec.coding_model import SYNTHESIS_TILE
        tiny_model.synthesis_tile = SYNTHESIS_TILE
    assert np.array_equal(whole, tiled)
    a = torch.arange(2 * 10 * 13, dtype=torch.float64).reshape(1, 2, 10, 13)
    assert torch.equal(run_tiled(lambda t: t * 2, a, 4, 1, 1), a * 2)


def test_quality_span_maps_qualities_onto_anchor_positions():
    from vaecodec.coding_model import CodingModel

    torch.manual_seed(0)
    net = HyperpriorModel(ModelConfig(**TINY_CONFIG))
    default = CodingModel.from_training_model(net, "t")
    lams = net.config.lambdas
    assert default.quality_lambda(1) == pytest.approx(lams[0]) and default.quality_lambda(100) == pytest.approx(lams[-1])
    wide = CodingModel.from_training_model(net, "t", quality_span=(-1.0, len(lams) - 0.5))
    assert wide.quality_lambda(1) == pytest.approx(lams[0] ** 2 / lams[1], rel=1e-3)  # one anchor below the first
    assert wide.weight_hash != default.weight_hash
    gains = wide.tables["log2_gain"].mean(axis=1)
    assert np.all(np.diff(gains) > 0)


def test_native_bfloat16_on_cpu_needs_bf16_instructions_and_onednn(monkeypatch):
    from vaecodec import hardware

    monkeypatch.setattr(hardware, "_cpu_has_bf16_instructions", lambda: True)
    was = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        assert not hardware.native_bfloat16("cpu")  # torch would emulate bfloat16: slower than float32
    finally:
        torch._C._set_mkldnn_enabled(was)
    assert hardware.native_bfloat16("cpu") == torch.backends.mkldnn.is_available()
    monkeypatch.setattr(hardware, "_cpu_has_bf16_instructions", lambda: False)
    assert not hardware.native_bfloat16("cpu")


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu amx_bf16 amx_tile", True), ("fpu avx512_bf16x", False)])
def test_bf16_instructions_are_read_from_the_cpu_flags(monkeypatch, tmp_path, flags, native):
    from vaecodec import hardware

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
    hardware._cpu_has_bf16_instructions.cache_clear()
    try:
        assert hardware._cpu_has_bf16_instructions() is native
    finally:
        hardware._cpu_has_bf16_instructions.cache_clear()


def test_mixed_precision_keeps_the_latent_interface_gdns_and_pixels_float32():
    """Under bfloat16 autocast the convolutions between GDNs run in bfloat16, but the layers at the pixels
    and at the latents and every GDN compute in float32 (bfloat16 cost up to 0.12 dB at high λ:
    benchmarks/results/bf16-step-avx512-all.json). Without autocast nothing changes."""
    torch.manual_seed(0)
    net = HyperpriorModel(ModelConfig(**TINY_CONFIG))
    x = torch.rand(1, 3, 64, 64)
    dtypes = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: dtypes.__setitem__(name, out.dtype))
             for name, m in net.named_modules() if name.startswith(("analysis.", "synthesis."))]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = net(x, torch.tensor([net.config.lambdas[-1]]), hard=True)
    for h in hooks:
        h.remove()
    last_analysis, last_synthesis = f"analysis.{len(net.analysis) - 1}", f"synthesis.{len(net.synthesis) - 1}"
    float32 = {n for n, d in dtypes.items() if d == torch.float32}
    assert {"analysis.0", last_analysis, "synthesis.0", last_synthesis} <= float32
    assert {n for n, m in net.named_modules() if isinstance(m, SimplifiedGDN)} <= float32
    inner = {"analysis.2", "analysis.4", "synthesis.2", "synthesis.4"}  # where most MACs are
    assert {n for n, d in dtypes.items() if d == torch.bfloat16} == inner
    transforms = {n: m for n, m in net.named_modules() if n.startswith(("analysis.", "synthesis."))}
    assert {n for n, m in transforms.items() if runs_in_bfloat16(m)} == inner  # the encoder's rule too
    with torch.no_grad():
        full = net(x, torch.tensor([net.config.lambdas[-1]]), hard=True)
    assert full.x_hat.dtype == torch.float32
    torch.testing.assert_close(mixed.x_hat, full.x_hat, atol=0.02, rtol=0)
    # the same parameters and names as plain convolutions: model files and checkpoints do not change
    assert list(net.state_dict()) == list(HyperpriorModel(ModelConfig(**TINY_CONFIG)).state_dict())
