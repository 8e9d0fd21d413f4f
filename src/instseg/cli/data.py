"""`instseg data check PATH`: is this dataset usable? Counts, sizes, instances, one line per problem."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from instseg.cli.console import err, out, safe_text, shown
from instseg.terminal import progress_bar

if TYPE_CHECKING:  # the checks module is imported by the command only
    from instseg.data.checks import CheckReport

app = typer.Typer(help="Inspect datasets.", no_args_is_help=True, add_completion=False)
BAR_WIDTH = 30


@app.command("check")
def check(
    path: Annotated[str, typer.Argument(help="A dataset folder (layout detected), 'cvppp:PATH', 'folder:PATH' "
                                                  "or 'coco:ANNOTATIONS.json[:IMAGE_DIR]'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Read every image and label map once; exit 0 when the dataset is usable, 1 with one line per problem."""
    from instseg.data.checks import check_dataset

    with progress_bar("checking", err, eta=False, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("check", total=None)
        report = check_dataset(path, lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    else:
        out.print(summary_table(report))
        for line in report.notes:
            out.print(f"note: {shown(line)}", highlight=False)
    for line in report.warnings:
        typer.echo(f"warning: {safe_text(line)}", err=True)
    for line in report.problems:  # one unwrapped line each, for people and for grep
        typer.echo(safe_text(line), err=True)
    if not report.usable:
        typer.echo(f"{report.problem_count} problem(s): not usable for training", err=True)
        raise typer.Exit(1)
    if not as_json:
        out.print("usable for training" if report.labelled else "usable for prediction only", highlight=False)


def summary_table(report: CheckReport) -> Table:
    table = Table(title=f"dataset {shown(report.data)}", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("images", f"{report.images} ({report.labelled} labelled)")
    sizes = sorted(report.sizes.items(), key=lambda kv: -kv[1])
    table.add_row("image sizes (HxW)", ", ".join(f"{size} x{n}" for size, n in sizes[:5])
                  + (f", ... ({len(sizes)} sizes)" if len(sizes) > 5 else ""))
    stats = report.instance_summary()
    if stats is not None:
        table.add_row("instances per image", f"min {stats['min']}  median {stats['median']:g}  max {stats['max']}")
        peak = max(n for _, _, n in report.histogram())
        for low, high, n in report.histogram():
            label = f"{low}" if low == high else f"{low}-{high}"
            table.add_row(f"  {label}", "#" * round(BAR_WIDTH * n / peak) + f" {n}")
    table.add_row("warnings", str(report.warning_count))
    table.add_row("problems", str(report.problem_count))
    return table
