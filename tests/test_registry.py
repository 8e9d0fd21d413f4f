import types

import pytest
import torch

from instseg import Backbone, ExportCaps, ModelSpec, hookimpl
from instseg.core.registry import PluginError, Registry, RegistryError, get_registry
from instseg.plugins.unet import UNetDecoder


class TinyEncoder(Backbone):
    """A two-level conv encoder for registry tests."""

    def __init__(self, in_channels: int = 3, width: int = 4) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(in_channels, width, 3, padding=1)
        self.b = torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.out_channels, self.strides = (width, 2 * width), (1, 2)

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def good_plugin(prefix="tiny"):
    def register_backbones(register):
        register(f"{prefix}-encoder", TinyEncoder)

    def register_models(register):
        register(ModelSpec(name=f"{prefix}-unet", decoder=UNetDecoder, default_backbone=f"{prefix}-encoder",
                           aliases=(f"{prefix}u",), export=ExportCaps(dynamic_hw=True)))

    return plugin_module(f"{prefix}_plugin", register_backbones=register_backbones, register_models=register_models)


@pytest.fixture
def registry():
    return Registry()


def test_builtins_come_through_entry_points(registry):
    plugins = registry.plugins
    assert plugins["unet"].builtin and plugins["unet"].distribution == "instseg"
    assert plugins["unet_cbam"].hooks == ["register_models"]
    assert "model:unet-cbam" in plugins["unet_cbam"].registered


def test_in_process_plugin_registers_and_builds(registry):
    info = registry.register_plugin(good_plugin())
    assert info.registered == ["backbone:tiny-encoder", "model:tiny-unet"]
    assert registry.model_spec("tinyu").name == "tiny-unet"  # alias
    model = registry.create_model("tiny-unet", width=4)
    assert model(torch.rand(1, 3, 20, 30)).embedding.shape == (1, 32, 20, 30)
    # its backbone also serves the built-in decoders
    assert registry.create_model("unet-cbam", backbone="tiny-encoder").multiple_of == 2
    registry.unregister_plugin("tiny_plugin")
    assert "tiny-unet" not in registry.list_models()


def test_name_collision_names_both_plugins(registry):
    def register_models(register):
        register(ModelSpec(name="unet", decoder=UNetDecoder))

    with pytest.raises(PluginError, match=r"'unet' is registered twice: by plugin 'unet' \(instseg .*\) and by plugin 'clash'"):
        registry.register_plugin(plugin_module("clash", register_models=register_models), name="clash")
    assert registry.model_spec("unet").plugin == "unet"  # no silent overwrite


def test_hook_error_is_isolated_and_rolled_back(registry):
    def register_models(register):
        register(ModelSpec(name="half-done", decoder=UNetDecoder))
        raise RuntimeError("boom")

    with pytest.raises(PluginError, match="boom"):
        registry.register_plugin(plugin_module("broken", register_models=register_models), name="broken")
    assert "half-done" not in registry.list_models()
    assert "unet" in registry.list_models()
    assert [p.name for p in registry.failed_plugins()] == ["broken"]


def test_fused_model_refuses_backbone(registry):
    class Whole(torch.nn.Module):
        out_channels, out_stride = 4, 1

        def __init__(self, backbone, width=4):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, width, 3, padding=1)
            self.out_channels = width

        def forward(self, features):
            return self.conv(features[0])

    def register_models(register):
        register(ModelSpec(name="whole", decoder=Whole, default_backbone=None))

    registry.register_plugin(plugin_module("fused", register_models=register_models), name="fused")
    assert registry.create_model("whole", width=6).decoder.out_channels == 6
    with pytest.raises(RegistryError, match="fused"):
        registry.create_model("whole", backbone="unet-encoder")


def test_invalid_backbone_contract_is_reported(registry):
    class Bad(Backbone):
        def __init__(self, in_channels=3):
            super().__init__()
            self.out_channels, self.strides = (4, 8), (2, 1)

    registry.register_plugin(plugin_module("bad", register_backbones=lambda register: register("bad", Bad)), "bad")
    with pytest.raises(RegistryError, match="ascending"):
        registry.create_backbone("bad")


def test_disable_plugins_env_keeps_builtins(monkeypatch):
    monkeypatch.setenv("INSTSEG_DISABLE_PLUGINS", "1")
    reg = Registry()
    assert all(p.builtin for p in reg.plugins.values())
    assert "unet" in reg.list_models()


def test_global_registry_is_created_once():
    assert get_registry() is get_registry()
