"""Shared rich consoles: tables and results on stdout, progress and diagnostics on stderr."""

from rich.console import Console

from instseg.terminal import safe_text, shown

__all__ = ["err", "fmt_mean_std", "out", "safe_text", "shown"]

out = Console()
err = Console(stderr=True)


def fmt_mean_std(summary: dict, key: str, digits: int = 3) -> str:
    return f"{summary[key]['mean']:.{digits}f} ± {summary[key]['std']:.{digits}f}"
