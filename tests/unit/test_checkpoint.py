
import pytest
import torch

from instseg.io.atomic import atomic_write_bytes
from instseg.checkpoint import build_model, load_checkpoint, save_checkpoint
from instseg.errors import CheckpointError
from instseg.testing import tiny_model


def payload(model):
    return {
        "model": {"name": "unet", "backbone": None, "width": 4, "embedding_dim": 8, "max_instances": 20,
                  "mean": [0.5] * 3, "std": [0.25] * 3, "kwargs": {}},
        "plugins": {"instseg": "0"},
        "state_dict": model.state_dict(),
        "config": {}, "epoch": 1, "step": 1,
    }


def test_round_trip_rebuilds_identical_model(tmp_path):
    model = tiny_model("unet", mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    save_checkpoint(tmp_path / "m.pt", payload(model))
    rebuilt = build_model(load_checkpoint(tmp_path / "m.pt"))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).embedding, rebuilt(x).embedding)
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


def test_run_directory_resolves_to_best(tmp_path):
    model = tiny_model("unet")
    save_checkpoint(tmp_path / "last.pt", {**payload(model), "epoch": 2})
    save_checkpoint(tmp_path / "best.pt", {**payload(model), "epoch": 1})
    assert load_checkpoint(tmp_path)["epoch"] == 1


def test_truncated_checkpoint_is_detected(tmp_path):
    save_checkpoint(tmp_path / "m.pt", payload(tiny_model("unet")))
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path / "cut.pt")


class Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    torch.save({"format": "instseg.checkpoint", "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "this would run code" not in capsys.readouterr().out


def test_missing_file_and_foreign_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an instseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_missing_plugin_names_the_package(tmp_path):
    p = payload(tiny_model("unet"))
    p["model"]["name"] = "mobile-unet"
    p["plugins"] = {"instseg": "0", "instseg-plugin-not-installed": "0.1.0"}
    save_checkpoint(tmp_path / "m.pt", p)
    with pytest.raises(CheckpointError, match="pip install instseg-plugin-not-installed==0.1.0"):
        build_model(load_checkpoint(tmp_path / "m.pt"))


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*.tmp"))


def test_round_trip_keeps_the_position_scale(tmp_path):
    model = tiny_model("unet", mean=(0.5,) * 3, std=(0.25,) * 3, position_scale=4.0).eval()
    record = payload(model)
    record["model"]["position_scale"] = 4.0
    save_checkpoint(tmp_path / "m.pt", record)
    rebuilt = build_model(load_checkpoint(tmp_path / "m.pt"))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert rebuilt.position_scale == 4.0 and torch.equal(model(x).embedding, rebuilt(x).embedding)
