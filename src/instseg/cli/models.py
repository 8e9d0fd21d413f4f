"""`instseg models`: every registered model and backbone, and any plugin that failed."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from instseg.cli.console import err, out, shown


def _params(build) -> str:
    try:
        module = build()
    except Exception as exc:  # a plugin's factory may be broken; show it, keep listing
        return f"error: {type(exc).__name__}"
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M"


def models(
    pattern: Annotated[Optional[str], typer.Argument(help="Filter names with a glob, e.g. 'unet*'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List registered models and backbones (name, kind, plugin, parameters, description)."""
    from instseg.models.factory import create_backbone, create_model
    from instseg.models.registry import get_registry

    reg = get_registry()
    rows = []
    for name in reg.list_models(pattern):
        spec = reg.model_spec(name)
        backbone = "fused" if spec.fused else spec.default_backbone
        rows.append({"name": name, "kind": "model", "plugin": spec.plugin, "backbone": backbone,
                     "aliases": list(spec.aliases), "params": _params(lambda: create_model(name)),
                     "description": spec.description})
    for name in reg.list_backbones(pattern):
        spec = reg.backbone_spec(name)
        rows.append({"name": name, "kind": "backbone", "plugin": spec.plugin, "backbone": "", "aliases": [],
                     "params": _params(lambda: create_backbone(name)), "description": spec.description})
    failed = [{"plugin": p.name, "distribution": p.distribution, "version": p.version, "error": p.error}
              for p in reg.failed_plugins()]
    if as_json:
        out.print_json(json.dumps({"models": rows, "failed_plugins": failed}))
        return
    table = Table(title="instseg models and backbones")
    for col in ("name", "kind", "plugin", "params", "description"):
        table.add_column(col, overflow="fold")
    for row in rows:
        name = row["name"] + (f" ({', '.join(row['aliases'])})" if row["aliases"] else "")
        desc = shown(row["description"]) + (f" [dim]\\[backbone: {row['backbone']}][/]" if row["backbone"] else "")
        table.add_row(name, row["kind"], row["plugin"], row["params"], desc)
    out.print(table)
    for p in reg.failed_plugins():
        err.print(f"[red]plugin failed[/] {shown(p.label)}: {shown(p.error or '')}", highlight=False, soft_wrap=True)
    if failed:
        err.print("its models and backbones are not listed; `instseg plugins` shows details", highlight=False)
