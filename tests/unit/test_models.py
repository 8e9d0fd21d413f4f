"""Every registered model, parametrised over the registry: a new plugin is covered automatically."""

import pytest
import torch

from instseg import create_model, list_backbones, list_models
from instseg.errors import RegistryError
from instseg.testing import check_backward, check_forward_shapes, check_overfit, tiny_model

MODELS = list_models()


def test_builtin_models_are_registered():
    assert {"unet", "unet-cbam"} <= set(MODELS)
    assert "unet-encoder" in list_backbones()


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name):
    check_forward_shapes(name)


@pytest.mark.parametrize("name", MODELS)
def test_backward_gives_finite_gradients(name):
    check_backward(name)


# Fewer steps for models that halve their loss well before the default 60 (by step 2-16 here)
# and whose steps are slow (ReNet GRUs step through rows and columns one by one): keeps the
# suite within budget; the criterion stays the same.
OVERFIT_OPTIONS = {name: {"steps": 30} for name in ("reseg", "reseg-coord", "segnet", "stacked-recurrent-hourglass")}
OVERFIT_OPTIONS["deeplabv3"] = {"steps": 20}


@pytest.mark.parametrize("name", MODELS)
def test_overfit_two_images(name):
    first, last = check_overfit(name, **OVERFIT_OPTIONS.get(name, {}))
    assert last < 0.5 * first


def test_unet_transposed_up_sampling():
    check_forward_shapes("unet", up="transposed")


def test_unet_cbam_has_attention_in_encoder_and_decoder():
    model = tiny_model("unet-cbam")
    kinds = {type(m).__name__ for m in model.backbone.modules()} & {type(m).__name__ for m in model.decoder.modules()}
    assert "CBAM" in kinds
    plain = tiny_model("unet")
    assert "CBAM" not in {type(m).__name__ for m in plain.modules()}


def test_model_pads_internally_to_its_stride():
    model = tiny_model("unet").eval()
    assert model.multiple_of == 16
    with torch.no_grad():
        out = model(torch.rand(1, 3, 33, 47))
    assert out.embedding.shape[-2:] == (33, 47)


def test_normalisation_lives_in_the_model():
    model = create_model("unet", width=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((1, 3, 4, 4), 0.75)
    assert torch.allclose(model.normalize(x), torch.ones_like(x))
    assert "normalize.mean" in model.state_dict()


def test_unknown_model_suggests_close_names():
    with pytest.raises(RegistryError, match="did you mean 'unet-cbam'"):
        create_model("unet-cbm")


def test_position_scale_adds_pixel_coordinates_to_two_embedding_channels():
    """Semi-convolutional embeddings: with the head's weights zeroed the embedding is exactly
    (row, column) / scale in channels 0 and 1 and zero elsewhere, at any input size."""
    model = tiny_model("unet", position_scale=8.0).eval()
    torch.nn.init.zeros_(model.embedding_head.conv.weight)
    torch.nn.init.zeros_(model.embedding_head.conv.bias)
    with torch.no_grad():
        embedding = model(torch.rand(2, 3, 24, 40)).embedding
    rows, cols = torch.meshgrid(torch.arange(24.0) / 8, torch.arange(40.0) / 8, indexing="ij")
    assert embedding.dtype == torch.float32 and embedding.shape == (2, 8, 24, 40)
    assert torch.equal(embedding[:, 0], rows.expand(2, -1, -1)) and torch.equal(embedding[:, 1], cols.expand(2, -1, -1))
    assert not embedding[:, 2:].any()


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_position_scale_must_be_off_or_positive(bad):
    with pytest.raises(ValueError, match="position_scale"):
        tiny_model("unet", position_scale=bad)


def test_foreground_counter_ignores_background_added_beside_the_objects():
    """A photo framed wider (more background) keeps its count; the whole-image pooling does not."""
    from instseg.models.interfaces import CounterHead

    x, extra = torch.rand(1, 8, 32, 32), torch.rand(1, 8, 32, 32)
    foreground = torch.zeros(1, 1, 32, 32)
    foreground[..., 8:20, 8:20] = 1.0
    # 32 more columns: a stride-4 multiple, beyond the receptive field (3 columns) of the foreground
    wider_x = torch.cat([x, extra], dim=3)
    wider_foreground = torch.cat([foreground, torch.zeros_like(foreground)], dim=3)
    torch.manual_seed(0)
    head = CounterHead(8, pooling="foreground").eval()
    torch.manual_seed(0)
    image_head = CounterHead(8).eval()
    with torch.no_grad():
        assert torch.allclose(head(x, foreground), head(wider_x, wider_foreground), atol=1e-6)
        assert (image_head(x) - image_head(wider_x)).abs().item() > 1e-5


def test_foreground_counter_reads_the_semantic_head_without_steering_it():
    model = tiny_model("unet", counter_pooling="foreground")
    model(torch.rand(2, 3, 64, 64)).count.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.counter_head.parameters())
    assert all(p.grad is None for p in model.semantic_head.parameters())


def test_counter_pooling_is_checked():
    with pytest.raises(ValueError, match="counter_pooling"):
        tiny_model("unet", counter_pooling="everything")
