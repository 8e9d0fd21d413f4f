"""Named training recipes: the defaults a run starts from, chosen by its data unless `--preset` says.

`synthetic` is TrainConfig's own defaults (a first run in ~5 minutes on 2 CPU cores). `cvppp`
is the recipe measured on the real CVPPP A1 leaves (`bench/cvppp.py`, docs/benchmarks.md): real images need
a larger working size and many more epochs than the synthetic renders. `nuclei` is the recipe
measured on DSB2018 (`bench/dsb2018.py`): native resolution (objects keep their pixel size),
256 px crops, ~1 hour on 2 CPU cores; `--cluster auto` picks `regions` there. Options typed on the
command line override the preset; the preset's name and every resulting value are stored in
the run's config.json.
"""

from __future__ import annotations

from typing import Any, Mapping

from instseg.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": {},
    # the instance-level Dice term: +0.023 SBD, |DiC| 0.70 -> 0.55 on the 20 tuning plants (bench/cvppp.py --split tune)
    "cvppp": {"image_size": 256, "epochs": 50, "batch_size": 8, "lr": 2e-3, "scheduler": "cosine",
              "loss_weights": {"discriminative": 1.0, "cross_entropy": 1.0, "dice": 1.0, "count": 1.0, "instance": 1.0}},
    # held-out microscopes: intensities scaled per image by percentiles, and gamma / dimming / noise /
    # inversion / stain augmentation (data.photometric)
    "nuclei": {"scale": 1.0, "image_size": 256, "epochs": 24, "batch_size": 8, "lr": 2e-3, "scheduler": "cosine",
               "normalize": "percentile", "photometric": "microscopy"},
}
AUTO = "auto"
DATA_PRESETS = {"synthetic": "synthetic", "cvppp": "cvppp"}  # data kind -> preset chosen by `auto`


def resolve_preset(name: str, data_kind: str) -> str | None:
    """The preset a run uses: `auto` picks by data kind (None for kinds without one), `none` none."""
    if name == AUTO:
        return DATA_PRESETS.get(data_kind)
    if name == "none":
        return None
    if name not in PRESETS:
        raise ConfigError(f"--preset {name}: choose from {', '.join([AUTO, 'none', *PRESETS])}")
    return name


def preset_values(preset: str | None, objective: str) -> dict[str, Any]:
    """A preset's values for a run of `objective`: its loss weights are the discriminative
    objective's terms, so another objective keeps its own."""
    values = dict(PRESETS.get(preset or "", {}))
    if objective != "discriminative":
        values.pop("loss_weights", None)
    return values


def apply_preset(options: Mapping[str, Any], given: set[str], preset: str | None) -> dict[str, Any]:
    """`options` with the preset's values (for the run's objective) for every option the user did not type."""
    values = preset_values(preset, options.get("objective", "discriminative"))
    return {**options, **{k: v for k, v in values.items() if k not in given}, "preset": preset}
