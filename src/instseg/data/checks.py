"""`instseg data check`: read every file of a dataset once, before anyone trains on it.

Problems make a dataset unusable (unmatched, unreadable or truncated files, label maps whose
size differs from their image or that are not integer ids, CVPPP fg masks or csv counts that
disagree with the label map, more instances in an image than `limits.TRAINING_INSTANCES`, no
usable label map at all; for COCO files every entry that cannot be decoded, see `io.coco`).
Warnings are worth a look but training works (an empty label map; COCO overlaps and how they
were resolved, box-only annotations). Notes say what helps (crowded data: the microscopy recipe).

`train` runs the same checks (`TrainingCheck`, by the datasets' `verify`) over the images it
trains and validates on, so it refuses, with the same line, what `data check` calls not usable.
Torch-free: checking a dataset does not need torch.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from instseg import limits
from instseg.data.layouts import discover, parse_data_spec
from instseg.data.samples import Sample, check_same_size, read_instance_labels, unusable
from instseg.errors import ConfigError, DataError
from instseg.instances.clustering import CROWDED
from instseg.io.coco import CocoLabels, decode_image, decoding_warnings, line_count
from instseg.io.images import display_path, read_image, read_label_map
from instseg.io.microscopy import FIXED, Reading

MAX_BINS = 10


@dataclass
class SampleFindings:
    size: tuple[int, int] | None = None  # None when the image is unreadable
    count: int | None = None  # None when there is no readable label map
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    data: str  # the spec, e.g. "cvppp:/data/A1"
    images: int = 0
    labelled: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> number of images
    instances: list[int] = field(default_factory=list)  # per readable label map
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems

    @property
    def problem_count(self) -> int:
        """How many problems there are: a summary line (`io.coco.More`) counts for those it stands for."""
        return line_count(self.problems)

    @property
    def warning_count(self) -> int:
        """How many warnings there are, counted likewise."""
        return line_count(self.warnings)

    def instance_summary(self) -> dict[str, float] | None:
        if not self.instances:
            return None
        return {"min": min(self.instances), "median": statistics.median(self.instances), "max": max(self.instances)}

    def histogram(self) -> list[tuple[int, int, int]]:
        """(low, high, images) over instance counts: one bin per count, or MAX_BINS equal ranges."""
        if not self.instances:
            return []
        low, high = min(self.instances), max(self.instances)
        width = max(1, -(-(high - low + 1) // MAX_BINS))
        counts = np.bincount((np.asarray(self.instances) - low) // width)
        return [(low + i * width, min(high, low + (i + 1) * width - 1), int(n)) for i, n in enumerate(counts)]

    def as_dict(self) -> dict:
        return {**asdict(self), "usable": self.usable, "problem_count": self.problem_count,
                "warning_count": self.warning_count, "instances_per_image": self.instance_summary(),
                "histogram": [list(b) for b in self.histogram()]}


def check_sample(sample: Sample, reading: Reading = FIXED) -> SampleFindings:
    """Read one sample's files and cross-check them; every failure becomes one line (a file with
    more planes or other channels than `reading` uses too: `io.microscopy`)."""
    found = SampleFindings()
    try:
        found.size = read_image(sample.image, reading).shape[:2]
    except DataError as exc:
        found.problems.append(str(exc))
    if sample.labels is None or (isinstance(sample.labels, CocoLabels) and found.size is None):
        return found
    try:
        labels = _read_labels(sample, found)
    except DataError as exc:
        found.problems.append(str(exc))
        return found
    found.count = max(int(labels.max()), 0) if labels.size else 0  # ids are contiguous 1..N
    shown = sample.labels.where if isinstance(sample.labels, CocoLabels) else display_path(sample.labels)
    if found.count == 0:
        found.warnings.append(f"{shown}: label map is empty (no instances)")
    if found.count > limits.TRAINING_INSTANCES:
        found.problems.append(f"{shown}: {found.count} instances, more than the {limits.TRAINING_INSTANCES} a "
                              "training image may hold (a training step grows with their square); split the image "
                              "into tiles")
    if sample.count is not None and sample.count != found.count:
        found.problems.append(f"{shown}: has {found.count} instances but the csv says {sample.count}")
    if sample.fg is not None:
        found.problems += _check_fg(sample.fg, labels)
    return found


def _read_labels(sample: Sample, found: SampleFindings) -> np.ndarray:
    """The sample's label map, checked against its image; COCO decoding notes become warnings."""
    if isinstance(sample.labels, CocoLabels):
        decoded = decode_image(sample.labels, found.size)
        found.warnings += decoding_warnings(sample.labels, decoded)
        return decoded.labels
    labels = read_instance_labels(sample.labels)
    if found.size is not None:
        check_same_size(found.size, labels.shape, sample.image, sample.labels)
    return labels


def _check_fg(path, labels: np.ndarray) -> list[str]:
    try:
        fg = read_label_map(path) > 0
    except DataError as exc:
        return [str(exc)]
    if fg.shape != labels.shape:
        return [f"{display_path(path)}: foreground mask is {fg.shape[0]}x{fg.shape[1]} but the label map is "
                f"{labels.shape[0]}x{labels.shape[1]}"]
    differ = int((fg != (labels > 0)).sum())
    if differ:
        return [f"{display_path(path)}: foreground mask differs from label map > 0 at {differ} pixels"]
    return []


def check_samples(report: CheckReport, samples: list[Sample], root: Path,
                  progress: Callable[[int, int], None] | None = None, reading: Reading = FIXED) -> list[SampleFindings]:
    """Check each sample into `report` (images read as `reading` says), then the dataset as a whole
    (`root` names it); `progress(done, total)` after each image. The findings come back in the samples' order."""
    findings = []
    for done, sample in enumerate(samples, start=1):
        found = check_sample(sample, reading)
        if found.size is not None:
            key = f"{found.size[0]}x{found.size[1]}"
            report.sizes[key] = report.sizes.get(key, 0) + 1
        if found.count is not None:
            report.instances.append(found.count)
        report.problems += found.problems
        report.warnings += found.warnings
        findings.append(found)
        if progress is not None:
            progress(done, len(samples))
    if report.labelled and report.instances and not any(report.instances):
        report.problems.append(f"{display_path(root)}: every label map is empty; nothing to learn")
    return findings


def check_dataset(
    spec: str,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check every file of a CVPPP, folder or COCO dataset; `progress(done, total)` after each image."""
    data = parse_data_spec(spec)
    if data.kind == "synthetic":
        raise ConfigError("`instseg data check` checks a dataset folder; synthetic data needs no check")
    layout = discover(data)
    report = CheckReport(str(data.absolute()), images=len(layout.samples), labelled=len(layout.labelled),
                         problems=list(layout.problems), warnings=list(layout.warnings), notes=list(layout.notes))
    check_samples(report, layout.samples, layout.root, progress)
    if not report.labelled:
        report.notes.append("no label maps: usable for prediction only")
    if max(report.instances, default=0) > CROWDED:
        report.notes.append(f"crowded: up to {max(report.instances)} instances per image; `--cluster auto` (the "
                            "default) measures k-means against regions, and `--preset nuclei` trains at native "
                            "resolution")
    return report


class TrainingCheck:
    """`data check`'s checks over the labelled images one run trains and validates on (`samples`, of
    the dataset `root` that the `--data` value `spec` names), made once: the first dataset to
    `verify` makes them, the other reads the counts. A dataset `data check` calls not usable is
    refused with the line it gives. Images are read as the run reads them (`reading`)."""

    def __init__(self, samples: list[Sample], root: Path, spec: str, reading: Reading = FIXED) -> None:
        self.samples, self.root, self.spec, self.reading = samples, root, spec, reading
        self._counts: dict[Path, int] | None = None

    @classmethod
    def of(cls, samples: list[Sample], reading: Reading = FIXED) -> TrainingCheck:
        """A check of `samples` alone, named by the first image's folder (a CVPPP dataset's own)."""
        root = samples[0].image.parent if samples else Path.cwd()
        return cls(samples, root, display_path(root), reading)

    def counts(self) -> dict[Path, int]:
        """Instances per image file; DataError naming the first problem when there is one."""
        if self._counts is None:
            report = CheckReport(self.spec, images=len(self.samples), labelled=len(self.samples))
            findings = check_samples(report, self.samples, self.root, reading=self.reading)
            if report.problems:
                raise unusable(report.problems, self.spec)
            self._counts = {sample.image: found.count or 0 for sample, found in zip(self.samples, findings)}
        return self._counts
