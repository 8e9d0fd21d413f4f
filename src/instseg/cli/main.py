"""`instseg`: the command-line entry point. Each verb lives in its own module."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from instseg.cli import data, evaluate, export, infer, models, plugins, predict, train
from instseg.cli.console import safe_text
from instseg.errors import InstsegError
from instseg.version import __version__

app = typer.Typer(
    name="instseg",
    help="Semantic instance segmentation with a discriminative loss: train, evaluate, export, infer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"instseg {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False,
) -> None:
    """`instseg --version`; the verbs are commands of `app`."""


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


DEBUG_ENV = "INSTSEG_DEBUG"  # set (to anything but 0 / empty) for full tracebacks in bug reports


def main() -> None:
    """Run the CLI; errors become one line on stderr and a non-zero exit (a traceback only
    with INSTSEG_DEBUG=1): user errors say what to fix, anything else says it is a bug."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        app()
    except InstsegError as exc:
        if debug:
            raise
        print(f"error: {safe_text(one_line(exc))}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:  # a bug in instseg or a plugin: one line, the traceback on request
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: internal error ({type(exc).__name__}: {safe_text(first)}); rerun with {DEBUG_ENV}=1 "
              "for the traceback and report it", file=sys.stderr)
        raise SystemExit(2) from None
