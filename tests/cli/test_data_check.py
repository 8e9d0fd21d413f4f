"""`instseg data check`: exit 0 when usable, 1 with one line per problem naming the file."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from data_fixtures import cvppp, folder, write_palette, write_raw_png
from instseg.cli.main import app
from instseg.data.checks import check_dataset

runner = CliRunner()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "instseg", *args], capture_output=True, text=True)


def test_a_good_cvppp_folder_is_usable(tmp_path):
    root = cvppp(tmp_path / "A1", n=5, colors=16)
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "5 (5 labelled)" in result.output and "40x36 x5" in result.output
    assert "usable for training" in result.output
    report = json.loads(runner.invoke(app, ["data", "check", f"cvppp:{root}", "--json"]).stdout)
    assert report["usable"] and report["images"] == 5 and report["sizes"] == {"40x36": 5}
    counts = report["instances"]
    assert report["instances_per_image"] == {"min": min(counts), "median": float(np.median(counts)), "max": max(counts)}
    assert sum(n for _, _, n in report["histogram"]) == 5


def test_every_problem_is_one_line_naming_its_file(tmp_path):
    root = cvppp(tmp_path / "A1", n=8, colors=16)
    label = lambda i: root / f"plant{i:03d}_label.png"  # noqa: E731
    (root / "plant001_rgb.png").write_bytes(b"garbage")  # corrupt
    data = (root / "plant002_rgb.png").read_bytes()
    (root / "plant002_rgb.png").write_bytes(data[: len(data) // 2])  # truncated
    write_palette(label(3), np.ones((10, 10), np.uint8))  # size mismatch
    Image.fromarray(np.zeros((40, 36, 3), np.uint8)).save(label(4))  # color label map
    write_palette(label(5), np.zeros((40, 36), np.uint8))  # empty: warning only (+ csv/fg mismatch)
    (root / "plant006_fg.png").write_bytes((root / "plant007_fg.png").read_bytes())  # fg disagrees
    (root / "plant099_label.png").write_bytes(label(8).read_bytes())  # unmatched
    result = run_cli("data", "check", str(root))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    problems = [line for line in lines if not line.startswith("warning:")][:-1]
    expected = {
        f"{root / 'plant001_rgb.png'}: not a readable image",
        f"{root / 'plant002_rgb.png'}: image is truncated or corrupted",
        f"{label(3)}: label map is 10x10 (HxW) but {root / 'plant003_rgb.png'} is 40x36",
        f"{label(4)}: label map must be a palette or single-channel image, got mode RGB",
        f"{label(5)}: has 0 instances but the csv says",
        f"{root / 'plant005_fg.png'}: foreground mask differs from label map > 0 at",
        f"{root / 'plant006_fg.png'}: foreground mask differs from label map > 0 at",
        f"{root / 'plant099_label.png'}: no matching _rgb.png image",
    }
    assert len(problems) == len(expected), lines
    for want in expected:
        assert sum(line.startswith(want) for line in problems) == 1, (want, problems)
    assert f"warning: {label(5)}: label map is empty (no instances)" in lines
    assert lines[-1] == f"{len(expected)} problem(s): not usable for training"


def test_folder_with_float_tiff_bomb_and_a_crowded_image(tmp_path):
    root = folder(tmp_path / "data")
    Image.fromarray(np.zeros((48, 56), np.float32)).save(root / "masks" / "img1.tif")
    write_raw_png(root / "images" / "img3.png", 10000, 9000, 1, 0)
    crowded = np.arange(40 * 36).reshape(40, 36) % 80  # 79 instances
    Image.fromarray(crowded.astype(np.uint16)).save(root / "masks" / "img2.png")
    report = check_dataset(f"folder:{root}")
    assert not report.usable
    assert [p.split(": ")[1] for p in report.problems] == ["label map holds floating-point values; instance ids must be integers",
                                                           "refused, too large to decode safely (Image size (90000000 pixels) exceeds limit of 89478485 pixels, could be decompression bomb DOS attack.); predict / infer --max-pixels raises the limit"]
    assert report.warnings == []  # the count target is normalised by the largest count in training: never clipped
    assert report.notes[-1].startswith("crowded: up to 79 instances per image")


def test_missing_empty_and_unlabelled_folders(tmp_path):
    result = run_cli("data", "check", str(tmp_path / "missing"))
    assert result.returncode == 1 and result.stderr == f"error: {tmp_path / 'missing'}: no such directory\n"
    (tmp_path / "empty").mkdir()
    result = run_cli("data", "check", f"cvppp:{tmp_path / 'empty'}")
    assert result.returncode == 1 and result.stderr == f"error: {tmp_path / 'empty'}: folder is empty\n"
    root = cvppp(tmp_path / "test", n=2, with_csv=False, with_fg=False)
    for p in root.glob("*_label.png"):
        p.unlink()
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "2 (0 labelled)" in result.output and "usable for prediction only" in result.output


def test_non_utf8_file_names_are_reported_printably(tmp_path):
    root = cvppp(tmp_path / "A1", n=2, with_csv=False)
    os.rename(root / "plant002_label.png", root / os.fsdecode(b"plant\xff02_label.png"))
    result = run_cli("data", "check", str(root))
    assert result.returncode == 1
    assert f"{root}/plant\\xff02_label.png: no matching _rgb.png image" in result.stderr
    assert f"{root / 'plant002_rgb.png'}: no matching _label.png label map" in result.stderr
