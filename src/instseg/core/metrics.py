"""Deprecated alias of instseg.torchfree.metrics (see `instseg._moved`)."""

from instseg._moved import reexport

reexport(__name__, ('instseg.torchfree.metrics',), globals())
