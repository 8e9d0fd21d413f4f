"""Deprecated alias of instseg.torchfree.render (see `instseg._moved`)."""

from instseg._moved import reexport

reexport(__name__, ('instseg.torchfree.render',), globals())
