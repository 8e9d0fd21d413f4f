"""Prediction: the one pipeline from images to label maps, its overlapped stages, tiles, object sizes, output files, evaluation."""
