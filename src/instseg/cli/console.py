"""Shared rich consoles: tables and results on stdout, progress and diagnostics on stderr."""

from rich.console import Console

out = Console()
err = Console(stderr=True)


def fmt_mean_std(summary: dict, key: str, digits: int = 3) -> str:
    return f"{summary[key]['mean']:.{digits}f} ± {summary[key]['std']:.{digits}f}"
