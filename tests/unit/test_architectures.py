"""The architecture plugins: backbones, their layers, options, --weights, and training through the CLI.

Forward shapes, gradients and overfitting of every registered model are in test_models.py.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from instseg import create_backbone, create_model, get_registry, list_backbones, list_models
from instseg.cli.main import app
from checkpoints import write_payload
from instseg.train.config import parse_model_options
from instseg.errors import RegistryError
from instseg.models.weights import load_backbone_weights
from instseg.models.weights import load_weights
from instseg.errors import CheckpointError, ConfigError
from instseg.models.architectures.blocks import ConvGRUCell, ReNet, coordinate_channels
from instseg.testing import TINY_WIDTH, check_backward, check_forward_shapes, tiny_model

runner = CliRunner()
TINY_RUN = ["--image-size", "64", "--train-size", "4", "--val-size", "2", "--batch-size", "2", "--width", "4"]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- registry -------------------------------------------------------------------------

def test_all_architectures_and_backbones_are_registered():
    assert {"unet", "unet-cbam", "reseg", "reseg-coord", "segnet", "deeplabv3",
            "stacked-recurrent-hourglass"} <= set(list_models())
    assert {"unet-encoder", "vgg16", "resnet34"} <= set(list_backbones())
    assert get_registry().model_spec("srhg").name == "stacked-recurrent-hourglass"


def test_export_capabilities_are_declared():
    reg = get_registry()
    assert reg.model_spec("segnet").export.exporter == "dynamo"
    assert "MaxUnpool2d" in reg.model_spec("segnet").export.notes
    for name in ("reseg", "reseg-coord", "srhg"):
        spec = reg.model_spec(name)
        assert spec.export.dynamic_hw and spec.multiple_of % 16 == 0, name
    assert tiny_model("reseg").multiple_of == 16 and tiny_model("segnet").multiple_of == 32


# -- backbones ------------------------------------------------------------------------

def test_backbones_at_original_width_have_the_published_sizes():
    # VGG16 conv layers: 14,714,688 parameters; ResNet-34 without its classifier: 21,284,672.
    assert n_params(create_backbone("vgg16", width=64, batch_norm=False)) == 14_714_688
    assert n_params(create_backbone("resnet34", width=64)) == 21_284_672


@pytest.mark.parametrize(("output_stride", "strides"), [(32, (2, 4, 8, 16, 32)), (16, (2, 4, 8, 16, 16)),
                                                          (8, (2, 4, 8, 8, 8))])
def test_resnet34_output_stride_dilates_the_last_stages(output_stride, strides):
    backbone = create_backbone("resnet34", width=TINY_WIDTH, output_stride=output_stride).eval()
    assert backbone.strides == strides
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [64 // s for s in strides]
    assert [f.shape[1] for f in features] == list(backbone.out_channels)


def test_vgg16_depth_keeps_the_first_blocks():
    backbone = create_backbone("vgg16", width=TINY_WIDTH, depth=3).eval()
    assert backbone.strides == (1, 2, 4) and backbone.out_channels == (4, 8, 16)
    with torch.no_grad():
        assert [tuple(f.shape[1:]) for f in backbone(torch.rand(1, 3, 32, 32))] == [(4, 32, 32), (8, 16, 16), (16, 8, 8)]


@pytest.mark.parametrize("model", ["unet", "unet-cbam"])
@pytest.mark.parametrize("backbone", ["vgg16", "resnet34"])
def test_unet_decoders_take_vgg16_and_resnet34(model, backbone):
    check_forward_shapes(model, shapes=((72, 88),), backbone=backbone)


def test_unet_on_resnet34_trains_the_backbone():
    check_backward("unet", backbone="resnet34")


@pytest.mark.parametrize(("model", "backbone"), [("deeplabv3", "vgg16"), ("reseg", "resnet34")])
def test_other_decoders_take_any_backbone(model, backbone):
    check_forward_shapes(model, shapes=((72, 88),), backbone=backbone)


def test_segnet_refuses_a_backbone():
    with pytest.raises(RegistryError, match="'segnet' has its encoder fused to its decoder; it does not take --backbone"):
        create_model("segnet", backbone="vgg16")


# -- layers ---------------------------------------------------------------------------

def test_coordinate_channels_by_hand():
    coords = coordinate_channels(torch.zeros(2, 5, 3, 3, dtype=torch.float64))
    assert coords.shape == (2, 3, 3, 3) and coords.dtype == torch.float64
    xs, ys, r = coords[0]
    assert xs[0].tolist() == [-1.0, 0.0, 1.0] and ys[:, 0].tolist() == [-1.0, 0.0, 1.0]
    assert r[1, 1] == 0 and r[0, 0] == pytest.approx(1.0) and r[0, 1] == pytest.approx(2**-0.5)


def test_renet_sweeps_rows_then_columns():
    torch.manual_seed(0)
    layer = ReNet(3, 2).eval()
    x = torch.rand(2, 3, 4, 5)
    with torch.no_grad():
        out = layer(x)
        # The same computation one row and one column at a time.
        rows = torch.stack([layer.horizontal(x[:, :, i].transpose(1, 2))[0] for i in range(4)], dim=1)  # n h w c
        cols = torch.stack([layer.vertical(rows[:, :, j])[0] for j in range(5)], dim=2)  # n h w c
    assert out.shape == (2, 4, 4, 5)
    assert torch.allclose(out, cols.permute(0, 3, 1, 2), atol=1e-6)


def test_renet_output_sees_the_whole_image():
    torch.manual_seed(0)
    layer = ReNet(1, 2).eval()
    x = torch.zeros(1, 1, 6, 6)
    y = x.clone()
    y[0, 0, 0, 0] = 1.0
    with torch.no_grad():
        assert not torch.allclose(layer(x)[..., 5, 5], layer(y)[..., 5, 5])


def test_conv_gru_keeps_its_state_when_the_update_gate_is_closed():
    cell = ConvGRUCell(2, 3)
    with torch.no_grad():
        cell.gates.weight.zero_()
        cell.gates.bias.fill_(30.0)  # z = sigmoid(30) ~ 1: h' = h
    x, h = torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4)
    assert torch.allclose(cell(x, h), h, atol=1e-6)
    assert cell.initial_state(x.double()).shape == (1, 3, 4, 4) and cell.initial_state(x.double()).dtype == torch.float64


# -- options --------------------------------------------------------------------------

def test_model_options_parse_and_route_to_the_backbone():
    options = parse_model_options(["coord_conv=true", "skip_stride=none", "rates=3,6", "backbone.output_stride=16",
                                   "name=x"])
    assert options == {"coord_conv": True, "skip_stride": None, "rates": (3, 6), "name": "x",
                       "backbone_kwargs": {"output_stride": 16}}
    for bad in ("coord_conv", "=1", "backbone.=3"):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            parse_model_options([bad])


def test_coord_conv_option_is_the_reseg_coord_model():
    via_option = tiny_model("reseg", **parse_model_options(["coord_conv=true"]))
    assert n_params(via_option) == n_params(tiny_model("reseg-coord")) > n_params(tiny_model("reseg"))


def test_unet_coord_conv_feeds_the_guides_to_every_decoder_level():
    model = tiny_model("unet-cbam", coord_conv=True).eval()
    seen = []
    for block in model.decoder.blocks:
        block.conv.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        model(torch.rand(1, 3, 48, 80))
    assert [tuple(x.shape[-2:]) for x in seen] == [(6, 10), (12, 20), (24, 40), (48, 80)]
    for x in seen:  # the last three channels of each level's input are that level's x, y, r maps
        assert torch.equal(x[:, -3:], coordinate_channels(x[:, :1]))
    plain = tiny_model("unet-cbam")
    assert [b.conv[0][0].in_channels - 3 for b in model.decoder.blocks] == [
        b.conv[0][0].in_channels for b in plain.decoder.blocks]
    check_forward_shapes("unet", shapes=((64, 64), (72, 88)), coord_conv=True)
    check_backward("unet", coord_conv=True)


def test_unknown_option_names_what_the_model_takes():
    with pytest.raises(RegistryError, match=r"model 'reseg' does not take option\(s\) color; it takes: renet_layers"):
        create_model("reseg", width=4, color=1)
    with pytest.raises(RegistryError, match=r"backbone 'vgg16' does not take option\(s\) output_stride"):
        create_model("deeplabv3", backbone="vgg16", width=4, backbone_kwargs={"output_stride": 16})


def test_deeplabv3_defaults_to_output_stride_16_with_a_stride_4_skip():
    model = tiny_model("deeplabv3")
    assert model.backbone.strides[-1] == 16 and model.decoder.out_stride == 4
    reference = tiny_model("deeplabv3", skip_stride=None)
    assert reference.decoder.out_stride == 16
    dense = tiny_model("deeplabv3", skip_stride=None, backbone_kwargs={"output_stride": 8})
    assert dense.backbone.strides[-1] == 8 and dense.decoder.out_stride == 8
    check_forward_shapes("deeplabv3", shapes=((72, 88),), skip_stride=None, backbone_kwargs={"output_stride": 8})
    with pytest.raises(ConfigError, match=r"skip_stride=3 is not a stride of the backbone's shallower features"):
        tiny_model("deeplabv3", skip_stride=3)


# -- hourglass: recurrent state -------------------------------------------------------

def test_hourglass_makes_fresh_state_on_every_forward():
    model = tiny_model("srhg").train()
    keys = set(model.state_dict())
    for batch, (h, w) in ((2, (64, 64)), (1, (96, 64)), (2, (64, 64))):
        out = model(torch.rand(batch, 3, h, w))
        (out.embedding.square().mean() + out.semantic.mean()).backward()  # a stale graph would fail here
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        assert model.double()(torch.rand(1, 3, 64, 64, dtype=torch.float64)).embedding.dtype == torch.float64


def test_hourglass_trains_20_epochs_from_the_cli(tmp_path):
    result = runner.invoke(app, ["train", "--model", "srhg", "--epochs", "20", "--image-size", "32", "--train-size", "4",
                                 "--val-size", "2", "--batch-size", "4", "--width", "4", "--out", str(tmp_path),
                                 "--name", "srhg"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "srhg" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 21))
    losses = [r["train"]["loss"] for r in records]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


# -- --weights ------------------------------------------------------------------------

def test_weights_load_and_report_missing_and_unexpected_keys(tmp_path):
    source = create_backbone("vgg16", width=TINY_WIDTH)
    state = source.state_dict()
    dropped = "features.0.bias"
    del state[dropped]
    state["classifier.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "vgg.pt")

    target = create_backbone("vgg16", width=TINY_WIDTH)
    report = load_backbone_weights(target, tmp_path / "vgg.pt")
    assert report.missing == (dropped,) and report.unexpected == ("classifier.weight",)
    assert report.loaded == len(state) - 1
    assert torch.equal(target.features[3].weight, source.features[3].weight)
    assert not torch.equal(target.features[0].bias, source.features[0].bias)
    summary = report.summary()
    assert f"1 backbone keys missing from the file, left as initialised (e.g. {dropped})" in summary
    assert "1 unexpected keys ignored (e.g. classifier.weight)" in summary


def test_weights_errors_are_clear(tmp_path):
    torch.save(create_backbone("vgg16", width=8).state_dict(), tmp_path / "wide.pt")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    torch.save({"weights": ConfigError("not a tensor")}, tmp_path / "code.pt")
    target = create_backbone("vgg16", width=TINY_WIDTH)
    with pytest.raises(CheckpointError, match=r"wide.pt: \d+ tensors do not fit the backbone's shapes, .*--width"):
        load_backbone_weights(target, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"foreign.pt: none of its 1 tensors fit the backbone"):
        load_backbone_weights(target, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="code.pt: refused to load"):
        load_backbone_weights(target, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_backbone_weights(target, tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="encoder is fused to its decoder"):
        load_backbone_weights(tiny_model("segnet").backbone, tmp_path / "wide.pt")


def test_weights_from_a_run_start_another_run_from_the_cli(tmp_path):
    args = ["train", "--model", "unet", "--backbone", "resnet34", "--epochs", "1", *TINY_RUN, "--out", str(tmp_path)]
    first = runner.invoke(app, [*args, "--name", "first"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, [*args, "--name", "second", "--weights", str(tmp_path / "first" / "last.pt")])
    assert second.exit_code == 0, second.output
    whole = tiny_model("unet", backbone="resnet34", width=4).state_dict()
    n_tensors = len([k for k in whole if not k.startswith("normalize.")])  # a run of the same model: all of it
    assert f"model weights {tmp_path / 'first' / 'last.pt'}: loaded {n_tensors} tensors" in " ".join(second.output.split())
    config = json.loads((tmp_path / "second" / "config.json").read_text())
    assert config["config"]["weights"].endswith("last.pt")


def test_a_run_of_the_same_model_starts_all_of_it_but_its_normalisation(tmp_path):
    """Fine-tuning (synthetic pretraining, then real data): every weight but the input mean /
    std, which stay the new data's; a run of another model gives only its backbone."""
    source = tiny_model("unet", mean=(0.1,) * 3, std=(0.2,) * 3)
    record = {"name": "unet", "embedding_dim": 8}
    write_payload(tmp_path / "run.pt", {"model": record, "state_dict": source.state_dict(), "config": {}})
    target = tiny_model("unet", mean=(0.5,) * 3, std=(0.3,) * 3)
    report = load_weights(target, "unet", tmp_path / "run.pt")
    assert report.part == "model" and not report.missing and not report.unexpected
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]) != key.startswith("normalize."), key
    other = tiny_model("unet-cbam")  # another model: only what fits its backbone
    report = load_weights(other, "unet-cbam", tmp_path / "run.pt")
    assert report.part == "backbone" and report.summary().startswith("backbone weights")


def test_model_options_survive_the_checkpoint(tmp_path):
    args = ["train", "--model", "deeplabv3", "--model-option", "skip_stride=none",
            "--model-option", "backbone.output_stride=8",
            "--epochs", "1", *TINY_RUN, "--out", str(tmp_path), "--name", "ref"]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert config["model"]["kwargs"] == {"skip_stride": None, "backbone_kwargs": {"output_stride": 8}}
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "ref"), "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
