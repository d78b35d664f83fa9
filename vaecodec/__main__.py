"""``python -m vaecodec``: the same command as ``vaecodec`` (and the entry point for ``torchrun -m vaecodec``)."""

from .cli import main

main()
