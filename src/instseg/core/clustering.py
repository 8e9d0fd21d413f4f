"""Deprecated alias of instseg.torchfree.clustering (see `instseg._moved`)."""

from instseg._moved import reexport

reexport(__name__, ('instseg.torchfree.clustering', 'instseg.torchfree.postprocess'), globals())
