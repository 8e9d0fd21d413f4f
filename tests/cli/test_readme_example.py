"""The README's Python example runs as printed, after the shell lines it starts from.

Both blocks are read from README.md (the fenced blocks after `<!-- ci: python-example-setup -->`
and `<!-- ci: python-example -->`) and run in a fresh folder, so the README cannot drift from
the API it shows.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from training_support import subprocess_env

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"^<!-- ci: {re.escape(marker)} -->\n```\w*\n(.*?)^```", text, re.S | re.M)
    assert match, f"README.md has no <!-- ci: {marker} --> block"
    return match.group(1)


def test_the_readme_python_example_runs(tmp_path):
    env = subprocess_env()
    setup = readme_block("python-example-setup")
    bin_dir = Path(sys.executable).parent
    shell = subprocess.run(["bash", "-euo", "pipefail", "-c", setup], cwd=tmp_path, capture_output=True, text=True,
                           env={**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}"})
    assert shell.returncode == 0, shell.stderr[-2000:]
    code = readme_block("python-example")
    assert len(code.strip().splitlines()) <= 10
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = result.stdout.strip().splitlines()[:2]
    height, width, count = re.fullmatch(r"\((\d+), (\d+)\) (\d+) instances", first).groups()
    assert (int(height), int(width)) == (256, 256) and int(count) >= 1
    assert re.search(r"on synthetic \(\d+ images\): SBD 0\.\d{3} ± 0\.\d{3}, FG Dice", second), second
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [
        "plant0_label.png", "plant0_overlay.png", "plant1_label.png", "plant1_overlay.png"]
    assert (tmp_path / "demo.onnx").stat().st_size > 0
