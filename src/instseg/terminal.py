"""What reaches a terminal: untrusted text (file names, checkpoint strings, data specs) made safe
to print, and the one progress bar style of every long command (train, predict, data check)."""

from __future__ import annotations

import re

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def safe_text(text: object) -> str:
    """Untrusted text (file names, checkpoint strings) with control characters shown as escapes,
    so an ESC in a file name cannot clear the screen or retitle the terminal."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def shown(text: object) -> str:
    """Untrusted text for a rich console: control characters and rich markup escaped."""
    return escape(safe_text(text))


def progress_bar(label: str, console: Console, *fields: ProgressColumn, eta: bool = True,
                 transient: bool = False, disable: bool = False) -> Progress:
    """`label [bar] done/total <fields> elapsed ETA remaining`; `label` may name a task field
    (e.g. "{task.fields[epoch]}")."""
    columns: list[ProgressColumn | str] = [TextColumn(label), BarColumn(), MofNCompleteColumn(), *fields]
    if eta:
        columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient, disable=disable)
