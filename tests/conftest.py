"""Shared fixtures: a tiny seeded model (fast) and small synthetic images of odd sizes."""

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"
TINY_CONFIG = dict(channels=8, latent_channels=12, hyper_channels=8)
TINY_CHECKERBOARD = dict(TINY_CONFIG, kind="checkerboard", bottleneck_channels=12, context_channels=8, num_scales=72)
TINY_CHANNEL = dict(TINY_CHECKERBOARD, channel_slices=(2, 4, 6))
TINY_KINDS = {"hyperprior": TINY_CONFIG, "checkerboard": TINY_CHECKERBOARD,
              "int8": TINY_CHECKERBOARD,  # with an 8-bit synthesis
              "channel": TINY_CHANNEL,
              "narrow": TINY_CHANNEL,  # with the 10-bit latent programs and the 11-bit synthesis
              "narrow12": TINY_CHANNEL}  # the same with 12-bit activations in the synthesis (as -r6w)


def make_tiny_model(seed: int = 0, model_id: str = "tiny-test", kind: str = "hyperprior"):
    from vaecodec.coding_model import CodingModel
    from vaecodec.model import ModelConfig, build_model

    torch.manual_seed(seed)
    config = TINY_KINDS[kind]
    net = build_model(ModelConfig(**config, synthesis_bits=8 if kind == "int8" else 0))
    if kind == "int8":  # an 8-bit synthesis, its steps calibrated on latents of the tiny model's range
        net.synthesis.calibrate(torch.randn(2, config["latent_channels"], 8, 8) * 3)
    if kind != "hyperprior":
        # A new model's context corrections start at zero; give them one, so tests see the contexts at work.
        with torch.no_grad():
            net.entropy_parameters[-1].weight.normal_(0, 0.2)
            net.context[0].weight.mul_(8)
            for context, correction in zip(getattr(net, "channel_context", []), getattr(net, "channel_parameters", [])):
                correction[-1].weight.normal_(0, 0.2)
                context.weight.mul_(8)
    model = CodingModel.from_training_model(net, model_id)
    if kind in ("narrow", "narrow12"):  # its 10-bit latent and 11/12-bit synthesis steps from two seeded images
        import tempfile

        from PIL import Image

        from vaecodec.training.narrow_calibration import latent_exponents, synthesis_exponents

        rng = np.random.default_rng(seed)
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for i in range(2):
                smooth = np.cumsum(rng.integers(-6, 7, (72, 80, 3)), 1) + 128
                paths.append(Path(folder) / f"calibration{i}.png")
                Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8)).save(paths[-1])
            net = model.float_network()
            synthesis = synthesis_exponents(net, paths, act_bits=12 if kind == "narrow12" else 11)
            model = model.with_narrow_programs({**latent_exponents(net, paths), **synthesis}, model_id)
    return model


def make_tiny_pixel_model(seed: int = 0, model_id: str = "px-tiny-test", hidden: int = 8, components: int = 1):
    """A seeded, untrained pixel model: random weights, but a sensible mean (the ref) and scale (~3 levels).

    With ``components`` > 1, a mixture whose components sit a grey level or two apart with different scales
    and weights (so bits-back has real choices to make)."""
    from vaecodec.pixel_model import PixelModel, context_size

    rng = np.random.default_rng(seed)
    if components == 1:
        out_bias = np.array([0.0, 1.1])
    else:
        spread = np.linspace(-1.0, 1.0, components)
        out_bias = np.concatenate([spread * 0.05, 1.1 + 0.6 * spread, -0.4 * spread])
    nets = {}
    for channels in (1, 3):
        nets[channels] = []
        for k in range(channels):
            n = context_size(channels, k)
            out_w = rng.normal(0, 0.05, (hidden, out_bias.size))
            nets[channels].append([(rng.normal(0, 0.3, (n, hidden)), rng.normal(0, 0.1, hidden)),
                                   (rng.normal(0, 0.3, (hidden, hidden)), rng.normal(0, 0.1, hidden)),
                                   (out_w, out_bias)])
    return PixelModel.from_float(nets, model_id)


@pytest.fixture(scope="session")
def tiny_pixel_model():
    return make_tiny_pixel_model()


@pytest.fixture(scope="session")
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_codec(tiny_model, tiny_pixel_model):
    from vaecodec.api import Codec

    return Codec(tiny_model, tiny_pixel_model)


@pytest.fixture(scope="session")
def tiny_mixture_model():
    return make_tiny_pixel_model(model_id="px-tiny-mixture", components=3)


@pytest.fixture(scope="session", params=["laplace", "mixture"])
def any_lossless_codec(request, tiny_model, tiny_pixel_model, tiny_mixture_model):
    """A tiny codec with each kind of pixel model: one Laplace per sub-pixel, or a mixture coded by bits-back."""
    from vaecodec.api import Codec

    return Codec(tiny_model, tiny_pixel_model if request.param == "laplace" else tiny_mixture_model)


@pytest.fixture(scope="session", params=["hyperprior", "checkerboard", "int8", "channel", "narrow"])
def any_tiny_codec(request):
    """A tiny codec of each architecture."""
    from vaecodec.api import Codec

    return Codec(make_tiny_model(kind=request.param, model_id=f"tiny-{request.param}"))


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    tiny_model.save(path)
    return path


@pytest.fixture(scope="session")
def shipped_codec():
    from vaecodec.api import default_codec

    return default_codec()


def smooth_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A seeded image with structure (gradients + blobs + a little noise), uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w, 1)
    planes = []
    for c in range(channels):
        a, b, f = rng.uniform(0.5, 2, 3)
        planes.append(128 + 60 * np.sin(a * 6 * xx + c) * np.cos(b * 5 * yy) + 30 * np.sin(f * 20 * (xx + yy)))
    img = np.stack(planes, -1) + rng.normal(0, 4, (h, w, channels))
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


@pytest.fixture
def rgb_image():
    return smooth_image(40, 56, seed=1)


def kodak_crop(x0: int, y0: int, w: int, h: int) -> np.ndarray:
    from PIL import Image

    with Image.open(DATA / "kodim23.png") as im:
        return np.asarray(im.convert("RGB"))[y0:y0 + h, x0:x0 + w].copy()
