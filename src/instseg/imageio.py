"""Deprecated alias of instseg.torchfree.imageio (see `instseg._moved`)."""

from instseg._moved import reexport

reexport(__name__, ('instseg.torchfree.imageio',), globals())
