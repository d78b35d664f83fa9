"""Pillow support for .vae files, registered by ``import vaecodec``::

    >>> import vaecodec
    >>> from PIL import Image
    >>> im = Image.open("photo.vae")          # header only: size, mode; no torch, no model
    >>> im.load()                              # decodes with vaecodec.default_codec()
    >>> im.save("copy.vae", quality=60)        # exactly the bytes of vaecodec.compress(im, 60)
    >>> im.save("exact.vae", lossless=True)    # every pixel kept

So programs written against Pillow (viewers, data loaders, thumbnailers) read
and write .vae like any other format. Opening parses only the header, as
Pillow's own plugins do, so listing or sniffing files stays cheap; torch and
the model are loaded by the first ``load()`` or ``save()``, through
:mod:`vaecodec.api`. Errors follow Pillow's conventions: a damaged header makes
``Image.open`` raise ``UnidentifiedImageError``; damaged data makes ``load()``
raise ``OSError`` (its ``__cause__`` is vaecodec's :class:`FormatError`).
Saving takes only ``quality``, ``target_bpp``, ``effort`` and ``lossless``, and refuses any other
parameter rather than ignoring it.

Metadata goes both ways as in Pillow's own formats: ``Image.open`` puts the
file's ICC profile, EXIF and XMP in ``im.info`` (``icc_profile``, ``exif``,
``xmp``), and ``save`` keeps those of the image saved (``vaecodec.compress``'s
default).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import IO

from PIL import Image, ImageFile

from .container import Header, accept, read_header_from
from .errors import FormatError
from .image import metadata_info

__all__ = ["FORMAT", "MIME_TYPE", "SAVE_PARAMETERS", "VaecodecImageFile"]

FORMAT = "VAECODEC"
EXTENSION = ".vae"
MIME_TYPE = "image/x-vaecodec"
SAVE_PARAMETERS = ("quality", "target_bpp", "effort", "lossless")
_DECODER = "vaecodec"


class VaecodecImageFile(ImageFile.ImageFile):
    """A .vae file opened by Pillow; ``header`` is its :class:`~vaecodec.container.Header`."""

    format = FORMAT
    format_description = "vaecodec learned image codec"
    header: Header

    def _open(self) -> None:
        assert self.fp is not None
        if not accept(self.fp.read(4)):
            raise SyntaxError("not a vaecodec file")
        self.fp.seek(0)
        try:
            # Reads the header and its metadata sections only, each length checked before it is read.
            header = read_header_from(self.fp.read)
        except FormatError as e:
            raise SyntaxError(f"broken vaecodec header: {e}") from e
        # The header alone does not say the file's length; the container's checks at load() do.
        self.fp.seek(0, os.SEEK_END)
        self.header = replace(header, num_bytes=self.fp.tell())
        self._mode = header.mode
        self._size = (header.width, header.height)
        self.info.update(metadata_info(header.metadata))
        # One tile, the whole file from byte 0: the decoder needs the header and the CRC too.
        # (A plain tuple, as Pillow < 11 has no ImageFile._Tile; newer Pillow unpacks it alike.)
        self.tile = [(_DECODER, (0, 0, header.width, header.height), 0, None)]


class _VaecodecDecoder(ImageFile.PyDecoder):
    """Decodes a whole .vae file at once (the ANS stack has no partial decoding)."""

    _pulls_fd = True

    def decode(self, buffer: Image.DecoderInput) -> tuple[int, int]:
        from .api import default_codec  # torch and the model: only when pixels are wanted

        assert self.fd is not None
        try:
            pixels = default_codec().decompress_array(self.fd.read())
        except FormatError as e:
            raise OSError(f"cannot decode vaecodec file: {e}") from e
        self.set_as_raw(pixels.tobytes())
        return -1, 0


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    params = im.encoderinfo
    unsupported = sorted(set(params) - set(SAVE_PARAMETERS))
    if unsupported:
        # Checked before any work: a silently ignored option (lossless=True, say) gives a file
        # other than the one asked for.
        raise ValueError(f"vaecodec cannot save with {', '.join(unsupported)}: "
                         f"the parameters it takes are {', '.join(SAVE_PARAMETERS)}")
    from .api import DEFAULT_QUALITY, default_codec
    from .refine import DEFAULT_EFFORT

    fp.write(default_codec().compress(im, params.get("quality", DEFAULT_QUALITY), params.get("target_bpp"),
                                      params.get("effort", DEFAULT_EFFORT), lossless=params.get("lossless", False)))


Image.register_open(FORMAT, VaecodecImageFile, accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, EXTENSION)
Image.register_mime(FORMAT, MIME_TYPE)
Image.register_decoder(_DECODER, _VaecodecDecoder)
