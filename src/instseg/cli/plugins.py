"""`instseg plugins`: every discovered plugin, what it registered, and why any failed."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from instseg.cli.console import err, out, shown

STATUS_STYLE = {"loaded": "green", "failed": "red", "skipped": "yellow"}


def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with full tracebacks) instead of a table.")] = False,
) -> None:
    """List plugins: entry point, distribution, version, hooks, what each registered, failures."""
    from instseg.models.registry import get_registry

    reg = get_registry()
    infos = [*reg.plugins.values(), *reg.skipped_plugins()]
    if as_json:
        out.print_json(json.dumps({"plugins": [p.as_dict() for p in infos]}))
        return
    table = Table(title="instseg plugins")
    table.add_column("plugin", overflow="fold")
    table.add_column("distribution", overflow="fold")
    table.add_column("hooks", no_wrap=True)
    table.add_column("registered", overflow="fold")
    table.add_column("status", overflow="fold")
    for p in infos:
        dist = f"{p.distribution} {p.version or ''}".strip() if p.distribution else "in-process"
        status = p.error or (f"skipped: {p.skipped}" if p.skipped else "loaded")
        registered = [f"{key.split(':', 1)[1]} ({key.split(':', 1)[0]})" for key in p.registered]
        table.add_row(
            shown(p.name), shown(dist) + (" (built-in)" if p.builtin else ""), "\n".join(p.hooks),
            shown("\n".join(registered)), f"[{STATUS_STYLE[p.status]}]{shown(status)}[/]")
    out.print(table)
    if any(p.error for p in infos):
        err.print("some plugins failed; `instseg plugins --json` shows their tracebacks", highlight=False)
