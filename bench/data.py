"""Data-loading throughput vs. the training step it must keep up with.

Writes a CVPPP-like folder (synthetic plants at 530x500, RGBA PNGs, palette label maps) to a
temporary directory, then measures in one run:

- loading: images/s out of a DataLoader built as the Trainer builds it (PNG decode, label
  map, paired augmentation and crop to --image-size), with 0 and 2 workers;
- training: images/s of forward + loss + backward + optimizer step of --model at the same
  size and batch size, on the device this machine has.

Loading keeps up when its images/s is at least the training images/s (ratio >= 1).

    python bench/data.py                       # 48 images, 256 px, batch 8, unet-cbam
    python bench/data.py --images 12 --batches 4 --steps 2 --width 8   # quick check
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from instseg.data import build_datasets
from instseg.data.cvppp import write_synthetic_cvppp
from instseg.device import resolve_device
from instseg.models.registry import create_model
from instseg.train.losses import MultiTaskLoss
from instseg.train.trainer import seed_worker


def loading_rate(dataset, batch_size: int, workers: int, batches: int) -> float:
    """Images/s over `batches` batches (epochs repeat as needed) after a first, untimed batch:
    worker start-up is not counted."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(0),
                        persistent_workers=workers > 0)
    images, done, start = 0, -1, 0.0
    while done < batches:
        for batch in loader:
            done += 1
            if done == 0:
                start = time.perf_counter()
                continue
            images += batch["image"].shape[0]
            if done == batches:
                break
    return images / max(time.perf_counter() - start, 1e-9)


def training_rate(model_name: str, width: int | None, size: int, batch_size: int, steps: int, device: str) -> float:
    """Images/s of full training steps on random images with a synthetic-like label map."""
    choice = resolve_device(device)
    model = create_model(model_name, width=width).to(choice.device).train()
    loss_fn = MultiTaskLoss(model.max_instances)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 3, size, size, device=choice.device)
    y = (torch.arange(size * size, device=choice.device).view(1, size, size) // (size * size // 16)).repeat(batch_size, 1, 1)

    def step() -> None:
        loss = loss_fn(model(x), y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if choice.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if choice.is_cuda:
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="CVPPP-like images to generate")
    parser.add_argument("--image-size", type=int, default=256, help="training crop size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=12, help="timed batches per loader")
    parser.add_argument("--model", default="unet-cbam")
    parser.add_argument("--width", type=int, default=None, help="model width (default: the architecture's)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = write_synthetic_cvppp(Path(tmp) / "A1", args.images, (530, 500))
        print(f"wrote {args.images} CVPPP-like images (530x500) in {time.perf_counter() - t0:.1f} s; "
              f"torch threads {torch.get_num_threads()}")
        train = training_rate(args.model, args.width, args.image_size, args.batch_size, args.steps, args.device)
        rows = [("training step", "-", train)]
        for augment in (True, False):
            train_set, _ = build_datasets(f"cvppp:{root}", image_size=args.image_size, seed=0, train_size=1,
                                          val_size=1, val_split=1 / args.images, augment=augment)
            for workers in args.workers:
                what = "load + augment" if augment else "load + crop only"
                rows.append((what, str(workers), loading_rate(train_set, args.batch_size, workers, args.batches)))

    print(f"\n{args.model} (width {args.width or 'default'}), {args.image_size} px, batch {args.batch_size}\n")
    print("| pipeline | workers | images/s | loading / training |")
    print("|---|---|---|---|")
    for what, workers, rate in rows:
        ratio = "-" if what == "training step" else f"{rate / train:.1f}x"
        print(f"| {what} | {workers} | {rate:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
