"""`instseg`: the command-line entry point. Each verb lives in its own module."""

from __future__ import annotations

import sys

import typer

from instseg.cli import data, evaluate, export, infer, models, plugins, predict, train
from instseg.errors import InstsegError

app = typer.Typer(
    name="instseg",
    help="Semantic instance segmentation with a discriminative loss: train, evaluate, export, infer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("models")(models.models)
app.command("plugins")(plugins.plugins)
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("predict")(predict.predict)
app.command("export")(export.export)
app.command("infer")(infer.infer)
app.add_typer(data.app, name="data")


def one_line(exc: InstsegError) -> str:
    """The error's own message, also when a DataLoader worker re-raised it with its traceback.

    PyTorch re-raises a worker's exception as the same type whose message is the whole
    worker traceback; its last line is `instseg.errors.<Name>: <our message>`.
    """
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    last = lines[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last.removeprefix(prefix) if len(lines) > 1 else last


def main() -> None:
    """Run the CLI; user errors become one line on stderr and a non-zero exit."""
    try:
        app()
    except InstsegError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
