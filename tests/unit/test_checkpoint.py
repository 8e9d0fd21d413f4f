
import pytest
import torch

from instseg.io.atomic import atomic_write_bytes
from dataclasses import replace
from pathlib import Path

from checkpoints import checkpoint_of, record
from instseg.checkpoint import Checkpoint, ModelRecord, load_checkpoint, save_checkpoint
from instseg.errors import CheckpointError
from instseg.models.factory import build_model, load_trained
from instseg.testing import tiny_model

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "layout-0.1"  # written before the layout by concept


def test_round_trip_rebuilds_identical_model(tmp_path):
    model = tiny_model("unet", mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    save_checkpoint(tmp_path / "m.pt", checkpoint_of(model))
    rebuilt = build_model(load_checkpoint(tmp_path / "m.pt"))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).embedding, rebuilt(x).embedding)
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


def test_run_directory_resolves_to_best(tmp_path):
    model = tiny_model("unet")
    save_checkpoint(tmp_path / "last.pt", checkpoint_of(model, epoch=2))
    save_checkpoint(tmp_path / "best.pt", checkpoint_of(model, epoch=1))
    assert load_checkpoint(tmp_path).epoch == 1


def test_truncated_checkpoint_is_detected(tmp_path):
    save_checkpoint(tmp_path / "m.pt", checkpoint_of(tiny_model("unet")))
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
    p = checkpoint_of(tiny_model("unet"), model=record(name="mobile-unet"),
                      plugins={"instseg": "0", "instseg-plugin-not-installed": "0.1.0"})
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
    save_checkpoint(tmp_path / "m.pt", checkpoint_of(model, model=record(position_scale=4.0)))
    rebuilt = build_model(load_checkpoint(tmp_path / "m.pt"))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert rebuilt.position_scale == 4.0 and torch.equal(model(x).embedding, rebuilt(x).embedding)


def test_the_typed_record_round_trips_through_its_payload(tmp_path):
    original = checkpoint_of(tiny_model("unet"), model=record(kwargs={"depth": 3}), epoch=7, best_sbd=0.5,
                             metrics={"sbd": {"mean": 0.5}}, cluster_scores={"kmeans": 0.4})
    save_checkpoint(tmp_path / "m.pt", original)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.model == original.model and loaded.path == str(tmp_path / "m.pt")
    assert replace(loaded, path="") == replace(original, state_dict=loaded.state_dict)
    assert Checkpoint.from_payload(loaded.to_payload(), "again").to_payload().keys() == original.to_payload().keys()
    assert ModelRecord.from_payload(original.model.to_payload()) == original.model


def test_an_out_of_range_record_field_is_named(tmp_path):
    payload = checkpoint_of(tiny_model("unet")).to_payload()
    payload["model"]["embedding_dim"] = 10**6
    with pytest.raises(CheckpointError, match=r"m.pt: field 'model.embedding_dim' has an invalid value 1000000"):
        Checkpoint.from_payload(payload, tmp_path / "m.pt")


def test_a_checkpoint_written_by_the_previous_layout_still_loads_and_predicts_the_same():
    """tests/fixtures/layout-0.1 was written before the modules moved: its checkpoint records
    model names and plugin distributions, not module paths, so it loads; and its prediction
    of the same image is the label map that layout wrote."""
    import numpy as np
    from PIL import Image

    import instseg

    trained = load_trained(LEGACY / "unet-w4.pt")
    assert trained.name == "unet" and trained.checkpoint.plugins == {"instseg": "0.1.0"}
    labels = instseg.load(LEGACY / "unet-w4.pt", device="cpu").segment(LEGACY / "plant.png")
    expected = np.asarray(Image.open(LEGACY / "plant_label.png"))
    assert labels.shape == expected.shape and (labels == expected).mean() > 0.99


def test_round_trip_keeps_the_counter_pooling(tmp_path):
    model = tiny_model("unet", counter_pooling="foreground").eval()
    save_checkpoint(tmp_path / "m.pt", checkpoint_of(model, model=record(counter_pooling="foreground")))
    rebuilt = build_model(load_checkpoint(tmp_path / "m.pt"))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert rebuilt.counter_pooling == "foreground" and torch.equal(model(x).count, rebuilt(x).count)
    legacy = build_model(load_checkpoint(LEGACY / "unet-w4.pt"))  # written before the option: the whole image
    assert legacy.counter_pooling == "image"
