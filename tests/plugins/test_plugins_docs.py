"""docs/plugins.md is enough to write a plugin: its files, installed as a distribution, pass the checks."""

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from instseg.models.hookspecs import HOOK_NAMES
from instseg.models.specs import ExportCaps, ModelSpec
from instseg.testing import (
    check_backbone,
    check_backward,
    check_forward_shapes,
    fake_distribution,
    only_plugins,
    plugin_backbones,
    plugin_models,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def doc_files() -> dict[str, str]:
    """{path: content} of every fenced block announced by `<!-- file: PATH -->`."""
    pattern = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)\n```", re.S)
    return {path: body + "\n" for path, body in pattern.findall(DOC.read_text())}


def test_doc_plugin_works_as_an_installed_distribution(tmp_path):
    files = doc_files()
    assert set(files) == {"pyproject.toml", "src/instseg_fpn_example/plugin.py", "tests/test_plugin.py"}
    compile(files["tests/test_plugin.py"], "tests/test_plugin.py", "exec")  # its test file is valid Python
    project = tomllib.loads(files["pyproject.toml"])["project"]
    sources = {path.removeprefix("src/"): body for path, body in files.items() if path.startswith("src/")}
    sources["instseg_fpn_example/__init__.py"] = ""
    with fake_distribution(tmp_path, project["name"], project["entry-points"]["instseg"], sources,
                           version=project["version"]), only_plugins(project["name"]):
        assert plugin_backbones(project["name"]) == ["tiny-resnet"]
        assert plugin_models(project["name"]) == ["tiny-fpn"]
        check_backbone("tiny-resnet")
        check_forward_shapes("tiny-fpn")
        check_backward("tiny-fpn")
        check_forward_shapes("unet-cbam", backbone="tiny-resnet", shapes=((64, 64),))


@pytest.mark.parametrize("spec", [ModelSpec, ExportCaps])
def test_doc_tables_cover_every_field(spec):
    text = DOC.read_text()
    missing = [f.name for f in dataclasses.fields(spec) if f"`{f.name}`" not in text]
    assert not missing, f"docs/plugins.md does not describe {spec.__name__} field(s) {missing}"


def test_doc_names_every_hook():
    text = DOC.read_text()
    assert all(f"`{hook}(register)`" in text for hook in HOOK_NAMES)
