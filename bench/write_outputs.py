"""What syncing prediction files costs, side by side: an fsync per file against one per batch.

    python bench/write_outputs.py                          # 1000 images, in a folder under the current one
    python bench/write_outputs.py --images 5000 --dir /data/predictions-disk

Each image's label map and overlay (256 x 256 synthetic plants, encoded once beforehand, as
`predict` encodes them) are written the way `predict` and `infer` write them
(`io.atomic.atomic_write_bytes`: temporary file, rename), either durable one by one (`--fsync`:
the file fsynced before its rename, then its folder: what every prediction did before) or as
the default now does (no fsync per file, the folder synced once per `--batch-size` images).
The two alternate in rounds in one run, on the same disk, so the ratio holds whatever else the
machine is doing; the table gives the median round. The file system decides the figures: run
it where the predictions will go (`--dir`).
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from instseg.data.synthetic import render_plant
from instseg.io.atomic import atomic_write_bytes, sync_folder
from instseg.io.writing import PNG_COMPRESSION
from instseg.io.pictures import overlay

MODES = ("per file (--fsync)", "per batch (default)")


def png(array: np.ndarray) -> bytes:
    """An array as the PNG bytes `io.writing.write_image` writes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **PNG_COMPRESSION)
    return buffer.getvalue()


def encoded_outputs(size: int) -> list[bytes]:
    """The label map and the overlay of a few synthetic plants, encoded: label, overlay, label, ..."""
    files = []
    for index in range(8):
        image, labels = render_plant(0, index, (size, size))
        files += [png(labels.astype(np.uint16)), png(overlay(image.astype(np.float32) / 255, labels))]
    return files


def write_round(files: list[bytes], images: int, folder: Path, per_file: bool, batch_size: int) -> float:
    """Milliseconds per file to write `images` images' two files into a fresh `folder`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    for image in range(images):
        for kind, data in zip(("label", "overlay"), files[2 * (image % 8):2 * (image % 8) + 2]):
            atomic_write_bytes(folder / f"plant{image:05d}_{kind}.png", data, durable=per_file)
        if not per_file and ((image + 1) % batch_size == 0 or image + 1 == images):
            sync_folder(folder)
    return (time.perf_counter() - start) / (2 * images) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="Images per round (2 files each).")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds of each way, alternating.")
    parser.add_argument("--batch-size", type=int, default=4, help="Images per folder sync (predict's default).")
    parser.add_argument("--size", type=int, default=256, help="Image side in pixels.")
    parser.add_argument("--dir", type=Path, default=Path("."), help="Where to write (a temporary folder in it).")
    args = parser.parse_args()
    files = encoded_outputs(args.size)
    work = Path(tempfile.mkdtemp(prefix="write-outputs-", dir=args.dir))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for _ in range(args.rounds):
            for mode, per_file in zip(MODES, (True, False)):
                times[mode].append(write_round(files, args.images, work / "out", per_file, args.batch_size))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.images} images x {args.rounds} rounds, a label map and an overlay each ({args.size} px, "
          f"{sum(map(len, files)) / len(files) / 1000:.0f} kB per file), batch {args.batch_size}, "
          f"in {args.dir.resolve()}")
    print("| fsync | ms per file (median round) | min..max | s per 10,000 images |\n|---|---|---|---|")
    for mode in MODES:
        median = statistics.median(times[mode])
        print(f"| {mode} | {median:.2f} | {min(times[mode]):.2f}..{max(times[mode]):.2f} | {median * 20:.0f} |")
    ratio = statistics.median(times[MODES[0]]) / statistics.median(times[MODES[1]])
    print(f"per batch: {ratio:.1f}x faster than per file")


if __name__ == "__main__":
    main()
