"""Untrusted text (file names, checkpoint strings, data specs) made safe to print on a terminal."""

from __future__ import annotations

import re

from rich.markup import escape

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def safe_text(text: object) -> str:
    """Untrusted text (file names, checkpoint strings) with control characters shown as escapes,
    so an ESC in a file name cannot clear the screen or retitle the terminal."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def shown(text: object) -> str:
    """Untrusted text for a rich console: control characters and rich markup escaped."""
    return escape(safe_text(text))
