"""The exceptions vaecodec raises on purpose. Leaf module: imports nothing."""

__all__ = ["VaecodecError", "FormatError", "ModelMismatchError", "ImageError", "ModelFileError"]


class VaecodecError(Exception):
    """Base class: every error vaecodec raises deliberately."""


class FormatError(VaecodecError, ValueError):
    """The bytes are not a valid .vae file: foreign, truncated, corrupted or malformed."""


class ModelMismatchError(FormatError):
    """A valid .vae file written with other model weights than the ones loaded."""


class ImageError(VaecodecError, ValueError):
    """The input image cannot be coded as given (mode, bit depth, size, unreadable)."""


class ModelFileError(VaecodecError, ValueError):
    """A model file that cannot be loaded: missing, foreign, damaged or of another version."""
