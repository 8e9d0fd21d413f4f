"""Training throughput of one model at 256x256: 1 vs 2 processes (DDP overhead), AMP vs fp32.

    python bench/train.py                                           # the docs/training.md throughput table
    python bench/train.py --steps 2 --warmup 1 --batch-size 2 --width 4   # a smoke run

Every row launches `torchrun` with this script as the worker: each process builds the
project's Trainer (so DDP, the GlobalBatchSampler and `Trainer.train_step` are the real ones),
loads its share of the batches into memory first (data generation is not timed), runs
`--warmup` optimizer steps, then times `--steps` steps between barriers. Images/s counts the
global batch. Rows run one after another in one invocation, so their ratios are comparable;
absolute numbers need an idle machine.

On the CPU (gloo): 1 process with every core (and the same under bf16 autocast where the CPU
has native bf16); 1 process with one thread; 2 processes x 1
thread with DDP; and the same 2 processes without gradient synchronisation (`no_sync` on every
step). DDP overhead = 1 - DDP / no-sync: the cost of the all-reduce alone, with cores divided
the same way. On a GPU: fp32 against AMP (bf16 or fp16 + grad scaler) in one process, and with
2+ GPUs the same over 2 processes (nccl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Setup:
    label: str
    processes: int
    threads: int  # per process (CPU rows)
    device: str
    amp: bool = False
    sync: bool = True  # False: DDP without gradient all-reduce


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet-cbam")
    parser.add_argument("--width", type=int, default=None, help="base width (default: the architecture's)")
    parser.add_argument("--size", type=int, default=256, help="image size")
    parser.add_argument("--batch-size", type=int, default=4, help="images per process and step")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--cpu", action="store_true", help="CPU rows even when a GPU is present")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-sync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def setups(args: argparse.Namespace) -> list[Setup]:
    import torch

    if torch.cuda.is_available() and not args.cpu:
        rows = [Setup("1 GPU, fp32", 1, 1, "cuda"), Setup("1 GPU, AMP", 1, 1, "cuda", amp=True)]
        if torch.cuda.device_count() >= 2:
            rows += [Setup("2 GPUs (nccl), fp32", 2, 1, "cuda"), Setup("2 GPUs (nccl), AMP", 2, 1, "cuda", amp=True)]
        return rows
    from instseg.device import native_cpu_bf16

    cores = os.cpu_count() or 1
    bf16 = native_cpu_bf16()
    return [
        Setup(f"1 process x {cores} threads", 1, cores, "cpu"),
        *([Setup(f"1 process x {cores} threads, bf16 autocast ({bf16})", 1, cores, "cpu", amp=True)] if bf16 else []),
        Setup("1 process x 1 thread", 1, 1, "cpu"),
        Setup("2 processes x 1 thread, DDP (gloo)", 2, 1, "cpu"),
        Setup("2 processes x 1 thread, no gradient sync", 2, 1, "cpu", sync=False),
    ]


# -- the worker: one process of a torchrun launch -------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from rich.console import Console

    from instseg.train.config import TrainConfig
    from instseg.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=args.model, width=args.width, image_size=args.size, batch_size=args.batch_size,
                             train_size=steps * world * args.batch_size, val_size=1, epochs=1, device=args.device,
                             amp=args.amp, out=out, name="bench")
        trainer = Trainer(config, console=Console(stderr=True, quiet=True))
        trainer.model.train()
        trainer.train_sampler.set_epoch(1)
        batches = list(trainer.train_loader)  # in memory: time training, not data generation

        def step(batch: dict) -> None:
            sync = trainer.ddp.no_sync() if (trainer.ddp is not None and args.no_sync) else nullcontext()
            with sync:
                trainer.train_step([batch])

        def barrier() -> None:
            if trainer.device.is_cuda:
                torch.cuda.synchronize()
            if dist.is_initialized():
                dist.barrier()

        for batch in batches[:args.warmup]:
            step(batch)
        barrier()
        start = time.perf_counter()
        for batch in batches[args.warmup:]:
            step(batch)
        barrier()
        seconds = time.perf_counter() - start
        if trainer.dist.is_main and args.result:
            images = args.steps * args.batch_size * world
            Path(args.result).write_text(json.dumps({"images_per_second": images / seconds,
                                                     "step_ms": 1000 * seconds / args.steps,
                                                     "device": describe_hardware(trainer.device.device)}))
        trainer.dist.close()


def describe_hardware(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"


# -- the driver ------------------------------------------------------------------------------
def run(setup: Setup, args: argparse.Namespace, result: Path) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(setup.processes), __file__, "--worker", "--result", str(result), "--model", args.model,
               "--size", str(args.size), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", setup.device, "--threads", str(setup.threads)]
    command += ["--width", str(args.width)] if args.width else []
    command += ["--amp"] if setup.amp else []
    command += ["--no-sync"] if not setup.sync else []
    env = {**os.environ, "OMP_NUM_THREADS": str(setup.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{setup.label}: worker failed\n{done.stderr[-3000:]}")
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, setup in enumerate(setups(args)):
            measured = run(setup, args, Path(tmp) / f"{i}.json")
            rows.append((setup, measured))
            print(f"measured: {setup.label}: {measured['images_per_second']:.2f} images/s", file=sys.stderr)
    print(table(rows, args))


def table(rows: list[tuple[Setup, dict]], args: argparse.Namespace) -> str:
    base = rows[0][1]["images_per_second"]
    lines = [f"{args.model}{f' (width {args.width})' if args.width else ''}, {args.size}x{args.size}, "
             f"batch {args.batch_size} per process, {args.steps} timed steps; {rows[0][1]['device']}",
             "", "| setup | global batch | ms / step | images/s | vs first row |", "|---|---:|---:|---:|---:|"]
    for setup, m in rows:
        lines.append(f"| {setup.label} | {setup.processes * args.batch_size} | {m['step_ms']:.0f} | "
                     f"{m['images_per_second']:.2f} | {m['images_per_second'] / base:.2f}x |")
    by_label = {s.label: m["images_per_second"] for s, m in rows}
    ddp = next((s.label for s, _ in rows if s.processes == 2 and s.sync and not s.amp and s.device == "cpu"), None)
    no_sync = next((s.label for s, _ in rows if not s.sync), None)
    single = next((s.label for s, _ in rows if s.processes == 1 and s.threads == 1 and s.device == "cpu"), None)
    if ddp and no_sync:
        lines.append(f"\nDDP overhead (gradient all-reduce): {1 - by_label[ddp] / by_label[no_sync]:.1%} "
                     f"(2 processes with vs without gradient sync)")
    if ddp and single:
        lines.append(f"Scaling efficiency: {by_label[ddp] / (2 * by_label[single]):.1%} "
                     "(2 processes x 1 thread against twice 1 process x 1 thread)")
    amp = [(s, m) for s, m in rows if s.amp]
    for s, m in amp:
        fp32 = next(m2 for s2, m2 in rows if s2.processes == s.processes and not s2.amp)
        where = f"{s.processes} GPU(s)" if s.device == "cuda" else "the CPU (bf16 autocast)"
        lines.append(f"AMP speed-up on {where}: {m['images_per_second'] / fp32['images_per_second']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
