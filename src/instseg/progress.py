"""The one progress bar style of every long command (train, predict, data check)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_bar(label: str, console: Console, *fields: ProgressColumn, eta: bool = True,
                 transient: bool = False, disable: bool = False) -> Progress:
    """`label [bar] done/total <fields> elapsed ETA remaining`; `label` may name a task field
    (e.g. "{task.fields[epoch]}")."""
    columns: list[ProgressColumn | str] = [TextColumn(label), BarColumn(), MofNCompleteColumn(), *fields]
    if eta:
        columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient, disable=disable)
