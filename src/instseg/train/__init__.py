"""Training: options and presets, the loop, losses, optimisation, run directories, resumable state, many processes."""
