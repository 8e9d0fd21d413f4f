"""Shared by the CLI lane: `instseg` invoked in-process, and the synthetic images that the
trained tiny run of tests/cli/conftest.py is tried on."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from instseg.cli.main import app, main

cli = CliRunner()
SIZES = [(70, 90), (64, 64), (100, 80)]  # working sizes 64x82, 64x64, 80x64: padded to 16 by infer


def invoke(*args):
    """`instseg ARGS...` in this process (arguments may be paths or numbers)."""
    return cli.invoke(app, [str(a) for a in args])


def run_main(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """`instseg ARGS` through `main()`, as a shell would run it: (exit status, stderr)."""
    argv = sys.argv
    sys.argv = ["instseg", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err
