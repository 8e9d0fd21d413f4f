"""Robustness to scale and framing, built from CVPPP A1 itself: tight crops of the 28 validation plants.

    python bench/cvppp_crops.py --data PATH/A1 --model cvppp-bench/val/unet-cbam/last.pt
    python bench/cvppp_crops.py --data PATH/A1 --model RUN/last.pt --object-size none auto
    python bench/cvppp_crops.py --data PATH/A1 --model cvppp-bench/tune/unet-cbam-TAG/last.pt --split tune

`--split tune` crops the 20 tuning plants instead (with a model trained on the other 80, as
`bench/cvppp.py --split tune` trains it), so that a robustness lever is ranked without the 28.

Each validation plant is cropped to the bounding box of its leaves plus a 10% margin on every
side and resized so that its shorter side is 64, 128, 256 and 320 px (labels by nearest
neighbour): a young rosette photographed up close, at four resolutions. Each set is scored as
a folder dataset with `instseg.load(model).evaluate()`, beside the uncropped plants, once per
`--object-size` (none: the run's geometry; auto: measured per image). The table gives SBD
and |DiC| per crop size, and the SBD change against the uncropped figure.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import instseg
from instseg.io.images import read_image, read_label_map, resize_image, resize_labels
from instseg.io.writing import write_label_map, write_rgb

ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"val": ROOT / "splits" / "cvppp_a1_val.txt", "tune": ROOT / "splits" / "cvppp_a1_tune.txt"}
SIDES = (64, 128, 256, 320)
MARGIN = 0.10


def stems(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def tight_crop(image: np.ndarray, labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The leaves' bounding box plus MARGIN of its size on every side, shorter side -> `side`."""
    ys, xs = np.nonzero(labels)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dy, dx = round(MARGIN * (y1 - y0)), round(MARGIN * (x1 - x0))
    y0, y1 = max(0, y0 - dy), min(labels.shape[0], y1 + dy)
    x0, x1 = max(0, x0 - dx), min(labels.shape[1], x1 + dx)
    image, labels = image[y0:y1, x0:x1], labels[y0:y1, x0:x1]
    factor = side / min(labels.shape)
    size = (max(1, round(labels.shape[0] * factor)), max(1, round(labels.shape[1] * factor)))
    return resize_image(image, size), resize_labels(labels, size)


def write_crops(data: Path, names: list[str], side: int, folder: Path) -> Path:
    """A folder dataset (images/, masks/) of the tight crops at one size."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for name in names:
        image, labels = tight_crop(read_image(data / f"{name}_rgb.png"), read_label_map(data / f"{name}_label.png"), side)
        write_rgb(folder / "images" / f"{name}.png", np.round(image * 255).astype(np.uint8))
        write_label_map(folder / "masks" / f"{name}.png", labels)
    return folder


def score(model: instseg.Predictor, data: str, val_list: Path, object_size: str) -> tuple[float, float, float]:
    report = model.evaluate(data, val_list=str(val_list), object_size=None if object_size == "none" else object_size)
    summary = report.summary
    return summary["sbd"]["mean"], summary["dic"]["mean"], summary["abs_dic"]["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="The A1 folder.")
    parser.add_argument("--model", required=True, help="A run directory, checkpoint or .onnx file.")
    parser.add_argument("--object-size", nargs="+", default=["none", "auto"], help="none, auto or pixels.")
    parser.add_argument("--split", choices=tuple(SPLITS), default="val",
                        help="val: the 28 validation plants (reported); tune: the 20 tuning plants (ranking levers).")
    args = parser.parse_args()
    model = instseg.load(args.model)
    val_list = SPLITS[args.split]
    names = stems(val_list)
    # a folder dataset is split into training and validation images even when only scored: one
    # plant's crop from outside the split fills the training side (it is never scored)
    filler = next(p.name.split("_")[0] for p in sorted(args.data.glob("plant*_rgb.png"))
                  if p.name.split("_")[0] not in names)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folders = {side: write_crops(args.data, [*names, filler], side, Path(scratch) / f"crops-{side}")
                   for side in SIDES}
        for size in args.object_size:
            full = score(model, f"cvppp:{args.data}", val_list, size)
            rows.append((size, "uncropped", *full, 0.0))
            for side, folder in folders.items():
                sbd, dic, abs_dic = score(model, f"folder:{folder}", val_list, size)
                rows.append((size, f"crop, shorter side {side}", sbd, dic, abs_dic, sbd - full[0]))
    print(f"\n{args.model} on the {len(names)} plants of {val_list.name}\n")
    print("| --object-size | images | SBD | DiC | \\|DiC\\| | SBD vs uncropped |")
    print("|---|---|---|---|---|---|")
    for size, what, sbd, dic, abs_dic, change in rows:
        print(f"| {size} | {what} | {sbd:.3f} | {dic:+.2f} | {abs_dic:.2f} | {change:+.3f} |")


if __name__ == "__main__":
    main()
