"""Real entry-point discovery over fake distributions: selection, isolation, collisions, spawn."""

import multiprocessing
import sys

import pytest
import torch
from fakeplugins import failing_hook_source, installed, plugin_source

from instseg import create_model, list_backbones, list_models
from instseg.errors import PluginError, RegistryError
from instseg.models.registry import get_registry, plugin_requirements
from instseg.testing import only_plugins


def test_installed_plugin_is_discovered_after_the_builtins(tmp_path):
    with installed(tmp_path, "instseg-fake", "fakeplug", plugin_source("fake"), version="0.3.0"), \
            only_plugins("instseg-fake"):
        reg = get_registry()
        builtins = [n for n, i in reg.plugins.items() if i.builtin]
        assert {"unet", "unet_cbam"} <= set(builtins) and list(reg.plugins) == [*builtins, "fakeplug"]
        info = reg.plugins["fakeplug"]
        assert (info.distribution, info.version, info.builtin, info.status) == ("instseg-fake", "0.3.0", False, "loaded")
        assert info.registered == ["backbone:fake-encoder", "model:fake-unet"]
        assert create_model("fake-unet", width=4)(torch.rand(1, 3, 10, 14)).embedding.shape == (1, 32, 10, 14)
        assert plugin_requirements("unet", "fake-encoder") == {"instseg": reg.plugins["unet"].version,
                                                               "instseg-fake": "0.3.0"}
    assert "fake-unet" not in list_models()  # gone with its distribution


def test_disable_plugins_loads_builtins_only(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTSEG_DISABLE_PLUGINS", "1")
    with installed(tmp_path, "instseg-fake", "fakeplug", plugin_source("fake")):
        reg = get_registry()
        assert all(p.builtin for p in reg.plugins.values()) and "unet-cbam" in list_models()
        assert ("fakeplug", "INSTSEG_DISABLE_PLUGINS=1") in [(p.name, p.skipped) for p in reg.skipped_plugins()]
        assert "fakeplug" not in sys.modules, "a skipped plugin must not even be imported"
        with pytest.raises(RegistryError, match=r"installed plugins not loaded: .*instseg-fake \(INSTSEG_DISABLE_PLUGINS=1\)"):
            create_model("fake-unet")


def test_instseg_plugins_loads_only_the_named_distributions(tmp_path, monkeypatch):
    monkeypatch.delenv("INSTSEG_DISABLE_PLUGINS")
    with installed(tmp_path, "instseg-fake-a", "plug_a", plugin_source("a")), \
            installed(tmp_path, "instseg-fake-b", "plug_b", plugin_source("b")):
        monkeypatch.setenv("INSTSEG_PLUGINS", " Instseg_Fake.A ")  # names are normalised like pip's
        reg = get_registry()
        assert "a-unet" in list_models() and "b-unet" not in list_models()
        assert ("instseg-fake-b", "not named in INSTSEG_PLUGINS") in [
            (p.distribution, p.skipped) for p in reg.skipped_plugins()]


def test_instseg_plugins_naming_a_missing_distribution_is_reported(monkeypatch):
    monkeypatch.delenv("INSTSEG_DISABLE_PLUGINS")
    monkeypatch.setenv("INSTSEG_PLUGINS", "instseg-not-installed")
    reg = get_registry()
    assert "unet" in list_models()
    [failed] = reg.failed_plugins()
    assert failed.error.startswith("named in INSTSEG_PLUGINS but not installed")


def test_plugin_that_raises_on_import_is_isolated(tmp_path):
    with installed(tmp_path, "instseg-broken", "broken", "import does_not_exist_anywhere\n"), \
            installed(tmp_path, "instseg-exits", "exits", "raise SystemExit('bye')\n"), \
            installed(tmp_path, "instseg-fake", "fakeplug", plugin_source("fake")), \
            only_plugins("instseg-broken", "instseg-exits", "instseg-fake"):
        reg = get_registry()
        assert {"unet", "unet-cbam", "fake-unet"} <= set(list_models())
        errors = {p.distribution: p.error for p in reg.failed_plugins()}
        assert errors["instseg-broken"].startswith(
            "import failed: ModuleNotFoundError: No module named 'does_not_exist_anywhere' (broken.py:1)")
        assert errors["instseg-exits"].startswith("import failed: SystemExit: bye")
        assert "does_not_exist_anywhere" in reg.plugins["broken"].traceback
        with pytest.raises(PluginError, match=r"may belong to a plugin that failed to load: plugin 'broken' "
                                              r"\(instseg-broken 0.1.0\): import failed"):
            create_model("mystery-net")


def test_plugin_that_raises_inside_a_hook_is_rolled_back_whole(tmp_path):
    source = failing_hook_source("half")
    with installed(tmp_path, "instseg-half", "halfway", source), only_plugins("instseg-half"):
        reg = get_registry()
        info = reg.plugins["halfway"]
        assert info.error.startswith("register_models failed: RuntimeError: boom (halfway.py:")
        assert info.registered == [] and "half-encoder" not in list_backbones()  # its other hook rolled back too
        with pytest.raises(PluginError, match=r"model 'half-unet' comes from plugin 'halfway' \(instseg-half 0.1.0\), "
                                              r"which failed to load: register_models failed: RuntimeError: boom"):
            create_model("half-unet")
        with pytest.raises(PluginError, match="backbone 'half-encoder' comes from plugin 'halfway'"):
            create_model("unet", backbone="half-encoder")


def test_name_collision_between_distributions_names_both(tmp_path):
    clash = plugin_source("one").replace('"one-unet"', '"unet"')
    with installed(tmp_path, "instseg-fake-a", "plug_a", plugin_source("dup")), \
            installed(tmp_path, "instseg-fake-b", "plug_b", plugin_source("dup")), \
            installed(tmp_path, "instseg-fake-c", "plug_c", clash), \
            only_plugins("instseg-fake-a", "instseg-fake-b", "instseg-fake-c"):
        reg = get_registry()
        assert reg.plugins["plug_a"].status == "loaded" and reg.backbone_spec("dup-encoder").plugin == "plug_a"
        assert reg.plugins["plug_b"].error == (
            "backbone name 'dup-encoder' is registered twice: by plugin 'plug_a' (instseg-fake-a 0.1.0) "
            "and by plugin 'plug_b' (instseg-fake-b 0.1.0)")
        assert reg.plugins["plug_c"].error == (
            f"model name 'unet' is registered twice: by plugin 'unet' (instseg {reg.plugins['unet'].version}) "
            "and by plugin 'plug_c' (instseg-fake-c 0.1.0)")
        assert reg.model_spec("unet").plugin == "unet" and "one-encoder" not in list_backbones()


def test_same_entry_point_name_in_two_distributions_loads_both(tmp_path):
    with installed(tmp_path, "instseg-fake-a", "plug_a", plugin_source("a"), entry_point="plugin"), \
            installed(tmp_path, "instseg-fake-b", "plug_b", plugin_source("b"), entry_point="plugin"), \
            only_plugins("instseg-fake-a", "instseg-fake-b"):
        reg = get_registry()
        assert reg.plugins["plugin"].distribution == "instseg-fake-a"
        assert reg.plugins["instseg-fake-b:plugin"].status == "loaded"
        assert {"a-unet", "b-unet"} <= set(list_models())


def probe_registry_in_child() -> dict:
    """Runs in a spawned process: is discovery lazy, does it work, does it run once?"""
    import instseg
    from instseg.models.registry import get_registry

    imported_before_use = "fakeplug" in sys.modules
    first = get_registry()
    models = instseg.list_models()
    again = get_registry()
    return {"imported_before_use": imported_before_use, "same_registry": first is again,
            "has_fake": "fake-unet" in models, "calls": list(sys.modules["fakeplug"].CALLS)}


def test_spawned_child_discovers_lazily_and_once(tmp_path):
    with installed(tmp_path, "instseg-fake", "fakeplug", plugin_source("fake")), only_plugins("instseg-fake"):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            seen = pool.apply(probe_registry_in_child)
    assert seen == {"imported_before_use": False, "same_registry": True, "has_fake": True,
                    "calls": ["register_backbones", "register_models"]}
