"""`instseg train`: train a registered model; defaults finish in ~5 min on a 2-core CPU.

The same command runs under `torchrun --nproc_per_node N -m instseg train ...` (one process per
device); Ctrl-C or SIGTERM saves last.pt and prints the `--resume` command.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer
from rich.table import Table

from instseg.cli.console import err, fmt_mean_std, out, shown
from instseg.cli.options import (DEVICE_METAVAR, Channels, Normalize, NormalizeChoice, TrainCluster, check_device,
                                 choices, plain)
from instseg.train.config import (DISCRIMINATIVE_WEIGHTS, OPTIMIZERS, PHOTOMETRIC, SCHEDULERS, TrainConfig,
                                  parse_loss_weights, parse_model_options, parse_zoom)
from instseg.io.microscopy import parse_channels
from instseg.limits import COUNTER_POOLING
from instseg.train.presets import AUTO, PRESETS

D = TrainConfig()  # the defaults live in one place
Optimizer = choices("Optimizer", OPTIMIZERS)
Photometric = choices("Photometric", PHOTOMETRIC)
CounterPooling = choices("CounterPooling", COUNTER_POOLING)
Scheduler = choices("Scheduler", SCHEDULERS)
Preset = choices("Preset", (AUTO, "none", *PRESETS))
CLI_TO_CONFIG = {"out_dir": "out", "compile_": "compile", "model_option": "model_kwargs", "loss_weight": "loss_weights"}  # parameter names that differ from TrainConfig's


def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `instseg models`).")] = D.model,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone for decoders that take one.")] = None,
    width: Annotated[Optional[int], typer.Option(help="Base channel width (default: the architecture's).")] = None,
    model_option: Annotated[Optional[List[str]], typer.Option(
        "--model-option", help="Architecture option KEY=VALUE, or backbone.KEY=VALUE for its backbone; repeatable "
                               "(e.g. --model-option skip_stride=none --model-option backbone.output_stride=8).")
    ] = None,
    weights: Annotated[Optional[str], typer.Option(
        help="Local state dict for the backbone, or a run's checkpoint: a run of the same model starts every "
             "weight but the input normalisation (fine-tuning), another model's its backbone.* weights.")] = None,
    objective: Annotated[str, typer.Option(
        help="Instance objective: discriminative (pull / push, the paper this project implements) or spatial "
             "(offsets to each object's centre with a learned bandwidth and seeds, Neven et al. 2019; no count "
             "needed), or one a plugin registers.")] = D.objective,
    data: Annotated[str, typer.Option(help="'synthetic', 'cvppp:PATH', 'folder:PATH', "
                                                 "'coco:ANNOTATIONS.json[:IMAGE_DIR]' or a dataset folder.")] = D.data,
    preset: Annotated[Preset, typer.Option(
        help="Recipe whose defaults the run starts from (auto: by --data, synthetic or cvppp; none: "
             "TrainConfig's); options you type override it.")] = Preset(AUTO),
    val_split: Annotated[float, typer.Option(help="Dataset folders: seeded fraction of images for validation.")] = D.val_split,
    val_list: Annotated[Optional[Path], typer.Option(help="Dataset folders: file of validation stems, one per line "
                                                          "(overrides --val-split).")] = None,
    augment: Annotated[bool, typer.Option(help="Dataset folders: paired flips, rotations, zoom, color jitter, blur.")] = D.augment,
    zoom: Annotated[str, typer.Option(
        metavar="MIN,MAX", help="Dataset folders: random zoom range around the working scale (log-uniform); "
                                "wider covers objects of more sizes.")] = ",".join(f"{z:g}" for z in D.zoom),
    photometric: Annotated[Photometric, typer.Option(
        help="Dataset folders: intensity augmentation; colour: brightness, contrast, saturation, blur; microscopy: "
             "also gamma, dimming, camera noise, inversion and stain shifts (held-out microscopes).")
    ] = Photometric(D.photometric),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = D.epochs,
    image_size: Annotated[int, typer.Option(help="Training crop size (square); images are scaled so that their "
                                                 "shorter side is this, here and at prediction.")] = D.image_size,
    scale: Annotated[Optional[float], typer.Option(
        help="Resize every image by this factor instead (1 = native resolution: objects keep their pixel size, "
             "as microscopy needs); --image-size is then the crop side only.")] = D.scale,
    normalize: Normalize = NormalizeChoice(D.normalize),
    channels: Channels = None,
    batch_size: Annotated[int, typer.Option(help="Images per step and process (global batch: x accumulate x processes).")] = D.batch_size,
    accumulate: Annotated[int, typer.Option(help="Micro-batches whose gradients add up to one step (a large batch on a small GPU).")] = D.accumulate,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = D.lr,
    optimizer: Annotated[Optimizer, typer.Option(help="Optimizer.")] = Optimizer(D.optimizer),
    scheduler: Annotated[Scheduler, typer.Option(help="Learning-rate schedule (after a linear warm-up).")
    ] = Scheduler(D.scheduler),
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = D.weight_decay,
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0 disables).")] = D.grad_clip,
    embedding_dim: Annotated[int, typer.Option(help="Embedding dimension D.")] = D.embedding_dim,
    delta_v: Annotated[float, typer.Option(help="Pull margin: pixels closer than this to their mean are not pulled.")
    ] = D.delta_v,
    delta_d: Annotated[float, typer.Option(help="Push margin: means further apart than 2 x this are not pushed.")
    ] = D.delta_d,
    loss_weight: Annotated[Optional[List[str]], typer.Option(
        "--loss-weight", metavar="NAME=VALUE",
        help=f"Weight of one loss term of the objective (discriminative: {', '.join(DISCRIMINATIVE_WEIGHTS)}; "
             "instance: the instance-level Dice term, 0 by default; spatial: instance, smooth, seed, cross_entropy, "
             "dice, count); repeatable.")] = None,
    position_scale: Annotated[float, typer.Option(
        help="Add each pixel's (row, column) / this many pixels to two embedding channels, so the head learns "
             "offsets to its object's centre (semi-convolutional embeddings; 0 = off).")] = D.position_scale,
    counter_pooling: Annotated[CounterPooling, typer.Option(
        help="What the counter head pools over: the whole image, or the foreground the semantic head finds "
             "(a count that does not move with how much background a photo frames).")
    ] = CounterPooling(D.counter_pooling),
    cluster: Annotated[TrainCluster, typer.Option(
        help="The run's clustering method (prediction default); auto: each method scored on validation at the "
             "end.")] = TrainCluster(D.cluster),
    max_instances: Annotated[int, typer.Option(help="Count normalisation: counter output x this = count (raised to the "
                                                    "largest count in the data: never clipped).")] = D.max_instances,
    train_size: Annotated[int, typer.Option(help="Synthetic data only: training images per epoch.")] = D.train_size,
    val_size: Annotated[int, typer.Option(help="Synthetic data only: validation images.")] = D.val_size,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = D.workers,
    device: Annotated[str, typer.Option(
        metavar=DEVICE_METAVAR, callback=check_device,
        help="auto (CUDA when present, else the CPU), cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK).")
    ] = D.device,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision: CUDA bf16 (else fp16 with a grad scaler); "
                                                              "CPU bf16 where the CPU has AMX / AVX-512 BF16.")] = D.amp,
    compile_: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model (slow first steps).")] = D.compile,
    sync_bn: Annotated[bool, typer.Option("--sync-bn/--no-sync-bn", help="SyncBatchNorm across processes (CUDA).")] = D.sync_bn,
    max_nonfinite: Annotated[int, typer.Option(help="Stop after this many non-finite losses in a row (each one skips its step).")] = D.max_nonfinite,
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard/--no-tensorboard", help="Log loss terms, learning rate, validation metrics and epoch pictures "
                                               "to <run>/tensorboard/ (pip install 'instseg\\[tensorboard]').")] = D.tensorboard,
    seed: Annotated[int, typer.Option(help="Seed for data, initialisation and shuffling.")] = D.seed,
    out_dir: Annotated[str, typer.Option("--out", "-o", help="Parent directory of run directories.")] = D.out,
    name: Annotated[Optional[str], typer.Option(help="Run directory name (default <model>-<timestamp>).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="RUN_DIR",
        help="Continue an interrupted run from its last.pt, with its saved options.")] = None,
) -> None:
    """Train a model; writes runs/<model>-<timestamp>/ with config.json, metrics.jsonl, last.pt, best.pt."""
    from instseg.checkpoint import load_resume_checkpoint
    from instseg.data.layouts import parse_data_spec
    from instseg.metrics.scores import METRIC_LABELS
    from instseg.objectives import objective_spec, with_objective
    from instseg.train.distributed import DistContext
    from instseg.train.presets import apply_preset, preset_values, resolve_preset
    from instseg.train.state import TrainingState
    from instseg.train.trainer import Trainer, resume_config

    options = {CLI_TO_CONFIG.get(k, k): plain(v) for k, v in ctx.params.items() if k != "resume"}
    spec = parse_data_spec(data)
    options["data"] = str(spec.absolute())  # runs stay valid from any directory
    options["val_list"] = str(val_list.absolute()) if val_list else None
    options["model_kwargs"] = parse_model_options(model_option or [])
    recipe = resolve_preset(plain(preset), spec.kind)
    goal = objective_spec(objective) if resume is None else None
    if goal is not None:
        options["loss_weights"] = parse_loss_weights(loss_weight or [], preset_values(recipe, goal.name).get("loss_weights"),
                                                     goal.loss_weights)
    options["zoom"] = parse_zoom(zoom)
    options["channels"] = parse_channels(channels)
    options["weights"] = str(Path(weights).absolute()) if weights else None
    checkpoint = None
    given = {CLI_TO_CONFIG.get(k, k) for k in ctx.params if k != "resume" and _given(ctx, k)}
    if goal is not None:
        config = TrainConfig(**apply_preset(with_objective(options, given, goal), given, recipe))
    else:
        checkpoint = load_resume_checkpoint(resume)
        if TrainingState.finished(checkpoint):
            out.print(f"{shown(resume)} is finished (epoch {checkpoint.epoch} of {checkpoint.config['epochs']}, best "
                      f"SBD {checkpoint.best_sbd:.3f}): nothing to resume; start a new run to train more",
                      highlight=False, soft_wrap=True)
            return
        config = resume_config(checkpoint, {k: options[k] for k in given - {"preset"}})
    with DistContext.from_env() as dist:
        result = Trainer(config, console=err, dist=dist, resume=checkpoint).fit()
    if result.interrupted_by is not None:
        if dist.is_main:
            err.print(f"interrupted at epoch {result.epoch}, step {result.epoch_step}/{result.steps_per_epoch}: "
                      f"saved {result.run_dir / 'last.pt'}\nresume with: {resume_command(result.run_dir, dist)}",
                      highlight=False, soft_wrap=True)  # never wrap a command users copy
        raise typer.Exit(128 + result.interrupted_by)
    if not dist.is_main:
        return

    table = Table(title=f"{config.model}: best epoch {result.best_epoch}/{config.epochs}")
    table.add_column("metric")
    table.add_column("best (mean ± std)", justify="right")
    table.add_column("last epoch", justify="right")
    for key, label in METRIC_LABELS.items():
        table.add_row(label, fmt_mean_std(result.best, key), fmt_mean_std(result.last, key))
    table.add_row("wall time", f"{result.seconds:.0f} s", "")
    table.add_row("train images/s", f"{result.images_per_second:.1f}", "")
    out.print(table)
    out.print(f"run directory: {result.run_dir}")
    out.print(f"next: instseg evaluate {result.run_dir}")


def _given(ctx: typer.Context, param: str) -> bool:
    """Whether the user typed the option (click's ParameterSource, compared by name: typer vendors click)."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def resume_command(run_dir: Path, dist: Any) -> str:
    """The command that continues this run, launched the way this one was."""
    tail = f"instseg train --resume {shlex.quote(str(run_dir))}"
    if not dist.enabled:
        return tail
    nodes = dist.world_size // max(dist.local_world_size, 1)
    if nodes == 1:
        return f"torchrun --standalone --nproc_per_node {dist.local_world_size} -m {tail}"
    return (f"torchrun --nnodes {nodes} --nproc_per_node {dist.local_world_size} -m {tail}"
            "  # with your rendezvous options, on every node")
