import types

import pytest
import torch

from instseg import Backbone, ExportCaps, ModelSpec, hookimpl
from instseg.errors import PluginError, RegistryError
from instseg.models.factory import create_backbone, create_model
from instseg.models.registry import PluginSelection, Registry, get_registry
from instseg.models.architectures.unet import UNetDecoder


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
    model = create_model("tiny-unet", registry=registry, width=4)
    assert model(torch.rand(1, 3, 20, 30)).embedding.shape == (1, 32, 20, 30)
    # its backbone also serves the built-in decoders
    assert create_model("unet-cbam", registry=registry, backbone="tiny-encoder").multiple_of == 2
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
    assert create_model("whole", registry=registry, width=6).decoder.out_channels == 6
    with pytest.raises(RegistryError, match="fused"):
        create_model("whole", registry=registry, backbone="unet-encoder")


def test_invalid_backbone_contract_is_reported(registry):
    class Bad(Backbone):
        def __init__(self, in_channels=3):
            super().__init__()
            self.out_channels, self.strides = (4, 8), (2, 1)

    registry.register_plugin(plugin_module("bad", register_backbones=lambda register: register("bad", Bad)), "bad")
    with pytest.raises(RegistryError, match="ascending"):
        create_backbone("bad", registry=registry)


def test_disable_plugins_env_keeps_builtins(monkeypatch):
    monkeypatch.setenv("INSTSEG_DISABLE_PLUGINS", "1")
    reg = Registry()
    assert all(p.builtin for p in reg.plugins.values())
    assert "unet" in reg.list_models()


def test_explicit_selection_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("INSTSEG_PLUGINS", "something-else")
    reg = Registry(PluginSelection(disabled=True))
    assert not reg.failed_plugins() and "unet" in reg.list_models()


def test_global_registry_is_created_once():
    assert get_registry() is get_registry()


def test_discovery_runs_once_per_registry(monkeypatch):
    calls = []
    monkeypatch.setattr("instseg.models.registry._discover", lambda: calls.append(1) or [])
    fresh = Registry()
    assert calls == []  # lazy: nothing happens until the registry is used
    assert fresh.list_models() == [] and fresh.list_backbones() == [] and not fresh.plugins
    assert calls == [1]


def test_a_plugin_registers_all_or_nothing(registry):
    def register_models(register):
        raise ValueError("no decoder today")

    plugin = plugin_module("half", register_backbones=lambda register: register("half-encoder", TinyEncoder),
                           register_models=register_models)
    with pytest.raises(PluginError, match=r"plugin 'half' \(in-process\) failed: register_models failed: "
                                          r"ValueError: no decoder today"):
        registry.register_plugin(plugin, name="half")
    assert "half-encoder" not in registry.list_backbones()
    assert registry.plugins["half"].attempted == ["backbone:half-encoder"]
    assert registry.pm.get_plugin("half") is None  # its hooks are not left behind in pluggy


def test_a_name_registered_twice_by_one_plugin_is_an_error(registry):
    def register_backbones(register):
        register("twice", TinyEncoder)
        register("twice", TinyEncoder)

    with pytest.raises(PluginError, match=r"backbone name 'twice' is registered twice by plugin 'dup'"):
        registry.register_plugin(plugin_module("dup", register_backbones=register_backbones), name="dup")


def test_an_alias_may_not_shadow_another_model(registry):
    def register_models(register):
        register(ModelSpec(name="my-unet", decoder=UNetDecoder, aliases=("unet-cbam",)))

    with pytest.raises(PluginError, match=r"model name 'unet-cbam' is registered twice: by plugin 'unet_cbam'"):
        registry.register_plugin(plugin_module("shadow", register_models=register_models), name="shadow")
    assert "my-unet" not in registry.list_models()


def test_misspelt_hook_is_reported_not_ignored(registry):
    with pytest.raises(PluginError, match=r"unknown hook register_model; instseg hooks are register_backbones, "
                                          r"register_models"):
        registry.register_plugin(plugin_module("typo", register_model=lambda register: None), name="typo")


def test_module_without_hooks_is_reported(registry):
    with pytest.raises(PluginError, match=r"implements no instseg hook"):
        registry.register_plugin(types.ModuleType("empty"), name="empty")


def test_hook_with_wrong_signature_is_rejected_by_pluggy(registry):
    with pytest.raises(PluginError, match=r"invalid plugin: PluginValidationError"):
        registry.register_plugin(plugin_module("sig", register_models=lambda reg: None), name="sig")


@pytest.mark.parametrize("bad, message", [
    (dict(name=""), "model name must be a non-empty string"),
    (dict(aliases="u"), "aliases must be a tuple of names"),
    (dict(export=ExportCaps(exporter="dynamo"), multiple_of=0), "multiple_of must be an int >= 1"),
    (dict(decoder="UNetDecoder"), "decoder must be callable"),
    (dict(export={"dynamic_hw": True}), "export must be ExportCaps"),
])
def test_model_spec_is_validated_when_built(bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        ModelSpec(**{"name": "m", "decoder": UNetDecoder, **bad})


def test_export_caps_know_the_exporters():
    assert ExportCaps().exporter == "dynamo" and ExportCaps(exporter="legacy", dynamic_hw=False).dynamic_hw is False
    with pytest.raises(ValueError, match="'dynamo' or 'legacy'"):
        ExportCaps(exporter="torchscript")


def test_invalid_spec_inside_a_hook_fails_the_plugin_with_the_reason(registry):
    def register_backbones(register):
        register("", TinyEncoder)

    with pytest.raises(PluginError, match=r"register_backbones failed: ValueError: backbone name must be"):
        registry.register_plugin(plugin_module("blank", register_backbones=register_backbones), name="blank")


def test_unknown_name_without_failures_stays_a_registry_error(registry):
    with pytest.raises(RegistryError, match=r"unknown backbone 'unet-encodr'; did you mean 'unet-encoder'\?"):
        create_backbone("unet-encodr", registry=registry)


def test_install_hint_for_a_distribution_that_is_not_installed(registry):
    assert registry.install_hint("instseg-nowhere", "1.2") == "pip install instseg-nowhere==1.2"
    assert registry.install_hint("instseg-nowhere", "") == "pip install instseg-nowhere"
