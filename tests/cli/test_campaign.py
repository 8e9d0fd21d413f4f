"""The hostile-input campaign as a test: every category of careless or hostile input the scripted
attack tried (files, paths, folders, output targets, checkpoints, ONNX files, options out of range,
datasets, COCO files), each case run through the real entry point (`instseg.cli.main.main`, in
this process so that the whole module runs in seconds). Every case must end with `error: ...`
lines that are not an internal error (one per failed input for batch verbs, or click's own usage
error), a non-zero exit, no
traceback, and every file that was there before byte for byte unchanged.

The regression tests of single fixes live beside the code's own tests; this module is the net.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from cli_support import run_main
from instseg.io.writing import write_label_map, write_rgb
from onnx_files import tiny_onnx

Build = Callable[["Workspace"], list]  # a case: the command's arguments, built in its own workspace


@dataclass
class Workspace:
    """A case's folder with the well-formed files cases start from."""

    root: Path
    run: Path  # a trained run directory (tests/cli/conftest.py)
    held: list = field(default_factory=list)  # lock descriptors a case holds (closed after it)

    @property
    def checkpoint(self) -> Path:
        return self.run / "best.pt"

    def image(self, name: str = "plant.png", size: tuple[int, int] = (48, 40)) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_rgb(path, np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8))
        return path

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def onnx(self, **metadata: str) -> Path:
        """A tiny instseg ONNX file with `metadata` written over its own."""
        return tiny_onnx(self.root / "model.onnx", **metadata)

    def busy(self, name: str = "busy") -> Path:
        """An output folder another run holds the lock of (a process that sleeps, holding it)."""
        import fcntl
        folder = self.folder(name)
        fd = os.open(folder / ".instseg.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.held.append(fd)
        return folder

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def coco(self, annotations: list[dict], images: list[dict] | None = None, name: str = "coco.json") -> str:
        """A `coco:` data spec: one 96 x 128 image and `annotations` (or `images`) as given."""
        self.image("coco-images/a.png", (96, 128))
        document = {"images": images or [{"id": 1, "file_name": "a.png", "height": 96, "width": 128}],
                    "annotations": annotations, "categories": [{"id": 1, "name": "leaf"}]}
        return f"coco:{self.file(name, json.dumps(document))}:{self.root / 'coco-images'}"

    def cvppp(self, name: str = "cv", mismatch: str | None = None) -> Path:
        """A two-plant CVPPP folder; `mismatch` = "fg": a foreground mask that disagrees with the labels,
        "size": a label map of another size than its image."""
        folder = self.folder(name)
        labels = np.zeros((40, 48), np.uint16)
        labels[5:20, 5:20], labels[22:35, 25:40] = 1, 2
        for plant in ("plant001", "plant002"):
            self.image(f"{name}/{plant}_rgb.png", (40, 48))
            write_label_map(folder / f"{plant}_label.png", labels if mismatch != "size" else labels[:30])
            fg = (labels > 0) if mismatch != "fg" else np.ones_like(labels, bool)
            write_rgb(folder / f"{plant}_fg.png", np.repeat(fg[..., None].astype(np.uint8) * 255, 3, axis=2))
        return folder


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming a huge image, with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def polygon(*xy: float) -> dict:
    return {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [list(xy)], "area": 1.0,
            "bbox": [0, 0, 1, 1], "iscrowd": 0}


OUT = ["--out"]  # every verb's output option

CASES: dict[str, Build] = {
    # -- files and images -----------------------------------------------------------------------
    "predict: an empty file named .png": lambda w: ["predict", w.checkpoint, w.file("x.png", b""), *OUT, w.root / "o"],
    "predict: a text file named .png": lambda w: ["predict", w.checkpoint, w.file("x.png", "hello"), *OUT, w.root / "o"],
    "predict: a truncated png": lambda w: ["predict", w.checkpoint,
                                           w.file("t.png", w.image("full.png").read_bytes()[:60]), *OUT, w.root / "o"],
    "predict: a png header claiming 100000 x 100000": lambda w: ["predict", w.checkpoint,
                                                                 w.file("bomb.png", png_header_bomb(100000, 100000)),
                                                                 *OUT, w.root / "o"],
    "predict: a missing input": lambda w: ["predict", w.checkpoint, w.root / "missing.png", *OUT, w.root / "o"],
    "predict: a folder with no images": lambda w: ["predict", w.checkpoint, w.folder("empty"), *OUT, w.root / "o"],
    "predict: a folder named like an image": lambda w: ["predict", w.checkpoint, w.folder("dir.png"), *OUT, w.root / "o"],
    "infer: random bytes as .onnx": lambda w: ["infer", w.file("m.onnx", os.urandom(512)), w.image(), *OUT, w.root / "o"],
    "infer: a checkpoint given as the model": lambda w: ["infer", w.checkpoint, w.image(), *OUT, w.root / "o"],
    # -- checkpoints ------------------------------------------------------------------------------
    "predict: random bytes as .pt": lambda w: ["predict", w.file("m.pt", os.urandom(4096)), w.image(), *OUT, w.root / "o"],
    "predict: an empty .pt": lambda w: ["predict", w.file("m.pt", b""), w.image(), *OUT, w.root / "o"],
    "predict: a truncated checkpoint": lambda w: ["predict", w.file("m.pt", w.checkpoint.read_bytes()[:5000]),
                                                  w.image(), *OUT, w.root / "o"],
    "evaluate: a JSON file as .pt": lambda w: ["evaluate", w.file("m.pt", "{}")],
    "export: a run folder without checkpoints": lambda w: ["export", w.folder("not-a-run"), "--onnx"],
    # -- options out of range ---------------------------------------------------------------------
    "train: --seed -1": lambda w: ["train", "--seed", "-1", "--epochs", "1", *OUT, w.root / "runs"],
    "train: --seed 2**40": lambda w: ["train", "--seed", str(2**40), "--epochs", "1", *OUT, w.root / "runs"],
    "train: --name ../../escaped": lambda w: ["train", "--name", "../../escaped", *OUT, w.root / "runs"],
    "train: --name a/b": lambda w: ["train", "--name", "a/b", *OUT, w.root / "runs"],
    "train: --name .": lambda w: ["train", "--name", ".", *OUT, w.root / "runs"],
    "train: --epochs 0": lambda w: ["train", "--epochs", "0", *OUT, w.root / "runs"],
    "train: --lr nan": lambda w: ["train", "--lr", "nan", *OUT, w.root / "runs"],
    "train: --image-size 1": lambda w: ["train", "--image-size", "1", *OUT, w.root / "runs"],
    "train: --zoom 2,1": lambda w: ["train", "--zoom", "2,1", *OUT, w.root / "runs"],
    "train: --loss-weight bogus=1": lambda w: ["train", "--loss-weight", "bogus=1", *OUT, w.root / "runs"],
    "train: --workers -1": lambda w: ["train", "--workers", "-1", *OUT, w.root / "runs"],
    "evaluate: --image-size 100000": lambda w: ["evaluate", w.run, "--image-size", "100000", *OUT, w.root / "e"],
    "evaluate: --image-size 0": lambda w: ["evaluate", w.run, "--image-size", "0", *OUT, w.root / "e"],
    "evaluate: --batch-size 0": lambda w: ["evaluate", w.run, "--batch-size", "0", *OUT, w.root / "e"],
    "predict: --batch-size 0": lambda w: ["predict", w.checkpoint, w.image(), "--batch-size", "0", *OUT, w.root / "o"],
    "predict: --object-size -5": lambda w: ["predict", w.checkpoint, w.image(), "--object-size", "-5", *OUT, w.root / "o"],
    "predict: --object-size nan": lambda w: ["predict", w.checkpoint, w.image(), "--object-size", "nan", *OUT, w.root / "o"],
    "predict: --cluster bogus": lambda w: ["predict", w.checkpoint, w.image(), "--cluster", "bogus", *OUT, w.root / "o"],
    "export: --opset 99": lambda w: ["export", w.run, "--onnx", "--opset", "99", *OUT, w.root / "m.onnx"],
    "export: --static 7x7": lambda w: ["export", w.run, "--onnx", "--static", "7x7", *OUT, w.root / "m.onnx"],
    "export: --static 100000x100000": lambda w: ["export", w.run, "--onnx", "--static", "100000x100000",
                                                 *OUT, w.root / "m.onnx"],
    "export: --int8 --sbd-tolerance nan": lambda w: ["export", w.run, "--int8", "--sbd-tolerance", "nan",
                                                     *OUT, w.root / "m.onnx"],
    # -- datasets ---------------------------------------------------------------------------------
    "data check: a missing folder": lambda w: ["data", "check", f"cvppp:{w.root / 'nowhere'}"],
    "data check: a label map of another size": lambda w: ["data", "check", f"cvppp:{w.cvppp(mismatch='size')}"],
    "train: a foreground mask that disagrees": lambda w: ["train", "--data", f"cvppp:{w.cvppp(mismatch='fg')}",
                                                          "--epochs", "1", *OUT, w.root / "runs"],
    "data check: COCO that is not JSON": lambda w: ["data", "check", f"coco:{w.file('c.json', '{not json')}"],
    "data check: COCO nested 100000 deep": lambda w: ["data", "check", f"coco:{w.file('c.json', nested(100000))}"],
    "data check: a COCO polygon at 5e8": lambda w: ["data", "check", w.coco([polygon(5e8, 5e8, -5e8, 5e8, 0, -5e8)])],
    "data check: a COCO polygon with NaN": lambda w: ["data", "check", w.coco([polygon(1, 1, float('nan'), 5, 9, 9)])],
    "data check: COCO boxes only": lambda w: ["data", "check", w.coco([{**polygon(1, 1, 5, 5, 9, 9), 'segmentation': []}])],
    "data check: a COCO file_name outside the image folder": lambda w: [
        "data", "check", w.coco([polygon(1, 1, 50, 5, 9, 40)], [{'id': 1, 'file_name': '../../../x.png', 'height': 96, 'width': 128}])],
    "data check: a COCO RLE of the wrong size": lambda w: [
        "data", "check", w.coco([{**polygon(1, 1, 5, 5, 9, 9), 'segmentation': {'size': [10**6, 10**6], 'counts': [0, 10**12]}}])],
    # -- ONNX metadata edited to nonsense ----------------------------------------------------------
    "infer: metadata scale 64": lambda w: ["infer", w.onnx(**{"instseg.scale": "64"}), w.image(), *OUT, w.root / "o"],
    "infer: metadata image size 4096": lambda w: ["infer", w.onnx(**{"instseg.image_size": "4096"}), w.image(),
                                                  *OUT, w.root / "o"],
    "infer: metadata static size 100000x100000": lambda w: ["infer", w.onnx(**{"instseg.static_size": "100000x100000"}),
                                                            w.image(), *OUT, w.root / "o"],
    "infer: metadata restarts 1e9": lambda w: ["infer", w.onnx(**{"instseg.cluster": json.dumps({"restarts": 10**9})}),
                                               w.image(), *OUT, w.root / "o"],
    "infer: metadata that is not JSON": lambda w: ["infer", w.onnx(**{"instseg.cluster": "{"}), w.image(),
                                                   *OUT, w.root / "o"],
    # -- output folders and files that must not be touched --------------------------------------
    "predict: into a folder another run is writing": lambda w: ["predict", w.checkpoint, w.image(), *OUT, w.busy()],
    "predict --overwrite: onto its own input folder's label map": lambda w: [
        "predict", w.checkpoint, w.image("in/x.png"), w.file("in/x_label.png", w.image("x2.png").read_bytes()),
        "--overwrite", *OUT, w.root / "in"],
    "predict --overwrite --coco: onto an input image": lambda w: [
        "predict", w.checkpoint, w.image("in/x.png"), "--coco", w.root / "in" / "x.png", "--overwrite",
        *OUT, w.root / "o"],
    "predict: onto a file that is not instseg's": lambda w: [
        "predict", w.checkpoint, w.image(), *OUT, w.file("o/plant_label.png", "my notes").parent],
    "export: onto another file without --overwrite": lambda w: ["export", w.run, "--onnx", *OUT,
                                                                w.file("notes.onnx", "mine")],
    "evaluate: --pred without --gt": lambda w: ["evaluate", "--pred", w.folder("p")],
}


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_gets_one_clean_line_and_touches_nothing(case, run, tmp_path, capsys):
    workspace = Workspace(tmp_path, run)
    args = CASES[case](workspace)
    before, run_before = snapshot(tmp_path), snapshot(run)
    try:
        code, stderr = run_main(args, capsys)
    finally:
        for fd in workspace.held:
            os.close(fd)
    assert code != 0, f"{case}: exit 0\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert "internal error" not in stderr, f"{case}: {stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    usage = code == 2 and ("Invalid value" in stderr or "No such option" in stderr)  # click's own usage error
    verdict = args[:2] == ["data", "check"] and "not usable" in stderr  # data check lists problems, one a line
    assert usage or verdict or errors, f"{case}: no error line\n{stderr}"
    after = snapshot(tmp_path)
    assert {p: after[p] for p in before} == before, f"{case} changed an input file"
    assert snapshot(run) == run_before, f"{case} changed the run"
