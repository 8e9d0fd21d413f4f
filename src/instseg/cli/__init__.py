"""The Typer CLI. Verb modules import torch only inside their commands, so `instseg infer`
and `instseg --help` never pay for (or need) torch."""
