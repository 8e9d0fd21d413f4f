"""`instseg`: the command-line entry point. Each verb lives in its own module."""

from __future__ import annotations

import sys

import typer

from instseg.cli import evaluate, models, predict, train
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
app.command("train")(train.train)
app.command("evaluate")(evaluate.evaluate)
app.command("predict")(predict.predict)


def main() -> None:
    """Run the CLI; user errors become one line on stderr and a non-zero exit."""
    try:
        app()
    except InstsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
