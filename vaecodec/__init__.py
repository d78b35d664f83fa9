"""vaecodec: a learned image codec (mean-scale hyperprior VAE + ANS).

    >>> import vaecodec
    >>> data = vaecodec.compress("photo.png", quality=75)    # bytes of a .vae file
    >>> image = vaecodec.decompress(data)                    # PIL.Image
    >>> vaecodec.read_header(data).bpp                       # no torch needed

Importing the package is cheap: torch and the model load on first use of the
codec, so reading headers (and Pillow's format check) stays light.

Importing it also registers the .vae format with Pillow (``Image.open``,
``im.save("x.vae", quality=75)``): see :mod:`vaecodec.pillow_plugin`.
"""

from . import pillow_plugin  # noqa: F401  (registers .vae with Pillow; imports no torch)
from .container import Header, read_header
from .errors import FormatError, ImageError, ModelMismatchError, VaecodecError

__version__ = "0.1.0"

__all__ = [
    "Codec", "Encoded", "compress", "decompress", "read_header", "Header",
    "FormatError", "ImageError", "ModelMismatchError", "VaecodecError", "__version__",
]

_LAZY = {"Codec", "Encoded", "compress", "decompress", "default_codec"}


def __getattr__(name):
    if name in _LAZY:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaecodec' has no attribute {name!r}")
