"""The CVPPP Leaf Segmentation Challenge layout (e.g. `A1/`).

    plantNNN_rgb.png     RGBA 8-bit photograph (alpha dropped)
    plantNNN_label.png   palette PNG, 4- or 8-bit; pixel values (palette indices) are leaf ids, 0 = soil
    plantNNN_fg.png      optional foreground mask (label > 0)
    A1.csv               optional `plantNNN_rgb.png,<leaf count>` lines

Test sets hold `_rgb.png` files only: they are discovered as unlabelled samples (prediction
only). `write_synthetic_cvppp` writes this layout from the synthetic renderer, for tests and
benchmarks (the real data may not be redistributed).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from instseg.data.samples import Layout, Sample, index_by_stem, list_files, unmatched
from instseg.data.synthetic import SyntheticConfig, render_plant
from instseg.errors import DataError
from instseg.io.atomic import atomic_write_text
from instseg.io.images import display_path
from instseg.io.writing import write_image

RGB, LABEL, FG = "_rgb", "_label", "_fg"


def looks_like_cvppp(root: Path) -> bool:
    return any(p.name.endswith(RGB + ".png") for p in list_files(root))


def discover_cvppp(root: Path) -> Layout:
    """Samples of a CVPPP folder, paired by plant stem; unmatched files and csv errors are problems."""
    files = list_files(root)
    pngs = [p for p in files if p.suffix.lower() == ".png"]
    rgb, problems = index_by_stem([p for p in pngs if p.stem.endswith(RGB)], RGB)
    labels, more = index_by_stem([p for p in pngs if p.stem.endswith(LABEL)], LABEL)
    fgs, even_more = index_by_stem([p for p in pngs if p.stem.endswith(FG)], FG)
    problems += more + even_more
    if not rgb:
        nested = sorted(display_path(p.name) for p in root.iterdir() if p.is_dir() and looks_like_cvppp(p))
        hint = f"; point --data at one of its subfolders: {', '.join(nested)}" if nested else ""
        raise DataError(f"{display_path(root)}: no *_rgb.png images (CVPPP layout){hint}")
    problems += unmatched(labels, rgb, "_rgb.png image")
    problems += unmatched(fgs, rgb, "_rgb.png image")
    if labels:  # a test set (rgb only) is fine; a partly labelled training set is not
        problems += unmatched(rgb, labels, "_label.png label map")

    counts, csv_path, csv_problems = read_counts(root, files)
    problems += csv_problems
    if csv_path is not None:
        shown = display_path(csv_path)
        problems += [f"{shown}: lists {name}_rgb.png, which is not in the folder" for name in counts if name not in rgb]
        problems += [f"{shown}: has no count for {display_path(path)}" for name, path in rgb.items() if name not in counts]

    used = set(rgb.values()) | set(labels.values()) | set(fgs.values()) | ({csv_path} if csv_path else set())
    ignored = [p for p in files if p not in used]
    notes = [f"ignored {len(ignored)} other file(s), e.g. {display_path(ignored[0].name)}"] if ignored else []
    samples = [Sample(name, path, labels.get(name), fgs.get(name), counts.get(name)) for name, path in sorted(rgb.items())]
    return Layout("cvppp", root, samples, problems, notes)


def read_counts(root: Path, files: list[Path]) -> tuple[dict[str, int], Path | None, list[str]]:
    """Leaf counts by plant stem from `<folder>.csv` (or the folder's only csv file)."""
    csvs = [p for p in files if p.suffix.lower() == ".csv"]
    named = [p for p in csvs if p.stem == root.name]
    path = named[0] if named else (csvs[0] if len(csvs) == 1 else None)
    if path is None:
        return {}, None, []
    shown = display_path(path)
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        return {}, path, [f"{shown}: cannot read ({exc.strerror})"]
    counts: dict[str, int] = {}
    problems = []
    rows = [row for row in csv.reader(io.StringIO(text)) if "".join(row).strip()]
    for number, row in enumerate(rows, start=1):
        value = row[1].strip() if len(row) > 1 else ""
        if not value.isdigit():
            if number > 1:  # the first row may be a header
                problems.append(f"{shown}: row {number} is not '<file>,<whole-number count>': {display_path(','.join(row))}")
            continue
        stem = display_path(Path(row[0].strip()).stem)
        counts[stem[: len(stem) - len(RGB)] if stem.endswith(RGB) else stem] = int(value)
    return counts, path, problems


def write_synthetic_cvppp(
    root: str | Path,
    n: int,
    size: tuple[int, int] = (530, 500),
    seed: int = 0,
    palette_colors: int = 256,
    with_fg: bool = True,
    with_csv: bool = True,
) -> Path:
    """Write n synthetic plants in the CVPPP layout; a 16-color palette gives 4-bit label PNGs."""
    root = Path(root)
    cfg = SyntheticConfig(min_leaves=min(5, palette_colors - 1), max_leaves=min(20, palette_colors - 1))
    lines = []
    for i in range(1, n + 1):
        image, labels = render_plant(seed, i, size, cfg=cfg)
        stem = f"plant{i:03d}"
        rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
        write_image(root / f"{stem}{RGB}.png", Image.fromarray(rgba, "RGBA"))
        write_image(root / f"{stem}{LABEL}.png", palette_image(labels, palette_colors))
        if with_fg:
            write_image(root / f"{stem}{FG}.png", palette_image((labels > 0).astype(np.int32), 2))
        lines.append(f"{stem}{RGB}.png,{int(labels.max())}")
    if with_csv:
        atomic_write_text(root / f"{root.name}.csv", "\n".join(lines) + "\n")
    return root


def palette_image(labels: np.ndarray, colors: int) -> Image.Image:
    """A palette ('P') image of ids; Pillow writes it 1/2/4/8-bit deep by the palette length."""
    if labels.max(initial=0) >= colors:
        raise ValueError(f"ids up to {labels.max()} do not fit a {colors}-color palette")
    image = Image.fromarray(labels.astype(np.uint8), "P")
    rng = np.random.default_rng(colors)
    palette = rng.integers(0, 256, (colors, 3), dtype=np.uint8)
    palette[0] = 0
    image.putpalette(palette.ravel().tolist())
    return image

