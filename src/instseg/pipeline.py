"""Deprecated alias of instseg.torchfree.inputs, instseg.torchfree.pipeline, instseg.torchfree.outputs (see `instseg._moved`)."""

from instseg._moved import reexport

reexport(__name__, ('instseg.torchfree.inputs', 'instseg.torchfree.pipeline', 'instseg.torchfree.outputs'), globals())
