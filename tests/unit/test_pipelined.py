"""The overlapped pipeline (`predict.stages`): the same files, in the same order, as the
sequential one; bounded in-flight work; errors surface; PNG outputs read back unchanged."""

import threading
import time

import numpy as np
import pytest

from instseg.errors import DataError
from instseg.io.inputs import gather_inputs
from instseg.predict.outputs import OutputOptions, predict_folder, write_prediction
from instseg.predict.pipeline import Failure, predict
from instseg.predict.stages import StageTimes, ordered_map
from predict_support import CodeRunner, write_images


def test_ordered_map_keeps_the_order_and_bounds_the_work_in_flight():
    lock = threading.Lock()
    started, taken, in_flight = [], [], []

    def slow(i):
        with lock:
            started.append(i)
            in_flight.append(len(started) - len(taken))
        time.sleep(0.002 * ((7 * i) % 5))  # later items often finish first
        return i * i

    results = []
    for value in ordered_map(slow, range(40), workers=3, depth=4):
        results.append(value)
        taken.append(value)
    assert results == [i * i for i in range(40)]
    assert max(in_flight) <= 4  # submitted and not yet taken: never more than the depth


def test_ordered_map_raises_where_the_result_is_taken_and_cancels_the_rest():
    calls = []

    def fail_at_three(i):
        calls.append(i)
        if i == 3:
            raise DataError("item 3 is broken")
        time.sleep(0.01)
        return i

    results = []
    with pytest.raises(DataError, match="item 3 is broken"):
        for value in ordered_map(fail_at_three, range(100), workers=2, depth=4):
            results.append(value)
    assert results == [0, 1, 2] and len(calls) < 10  # the queue was cancelled, not drained


@pytest.mark.parametrize("batch_size, workers", [(1, 1), (3, 2), (8, 4)])
def test_overlapped_folder_writes_what_the_sequential_pipeline_writes(tmp_path, batch_size, workers):
    write_images(tmp_path / "in", [(32, 32), (40, 56), (32, 32), (24, 40), (40, 56), (32, 32), (32, 48)])
    (tmp_path / "in" / "plant003_rgb.png").write_bytes(b"not a png")  # a failure passes through in order
    paths = gather_inputs([tmp_path / "in"])
    options = OutputOptions(embeddings=True)

    sequential = tmp_path / "sequential"
    sequential.mkdir()
    expected = []
    for item in predict(paths, CodeRunner(image_size=32), batch_size=batch_size):
        expected.append(item.name)
        if not isinstance(item, Failure):
            write_prediction(item, sequential, options)

    seen = []
    result = predict_folder(paths, CodeRunner(image_size=32), tmp_path / "overlapped", batch_size=batch_size,
                            options=options, on_result=lambda item: seen.append(item.name), threads=workers)
    assert seen == expected  # results come in the sequential pipeline's order
    assert len(result.failures) == 1 and "plant003_rgb.png: not a readable image" in result.failures[0]
    files = sorted(p.name for p in sequential.iterdir())
    assert files == sorted(p.name for p in (tmp_path / "overlapped").iterdir()) and len(files) == 6 * 3
    for name in files:
        assert (sequential / name).read_bytes() == (tmp_path / "overlapped" / name).read_bytes(), name
    assert set(result.stage_times.seconds) == {"read", "network", "cluster", "write"}
    assert all(seconds > 0 for seconds in result.stage_times.seconds.values())


def test_a_network_error_stops_the_overlapped_folder_with_its_message(tmp_path):
    write_images(tmp_path / "in", [(32, 32)] * 6)

    class Wrong(CodeRunner):
        def __call__(self, images):
            semantic, embedding, count = super().__call__(images)
            return semantic, embedding, count[:, 0]

    with pytest.raises(DataError, match="outputs do not fit its contract"):
        predict_folder(gather_inputs([tmp_path / "in"]), Wrong(), tmp_path / "out", batch_size=2, threads=2)


def test_stage_times_name_the_stage_that_sets_the_pace():
    times = StageTimes()
    assert times.timed("network", lambda x: x + 1)(1) == 2 and times.seconds["network"] > 0
    times.seconds.update(read=0.002, network=0.09, cluster=0.12, write=0.01)
    times.threads.update(read=2, cluster=2, write=2)
    assert times.busiest() == "network"  # clustering took longer in all, but on two threads
    assert times.describe(images=2) == (
        "time per image, summed over each stage's threads: reading 1 ms, network 45 ms, clustering 60 ms, "
        "writing 5 ms; network sets the pace (45 ms per image on each of its 1 thread(s))")


def test_no_overlay_writes_label_maps_only(tmp_path):
    write_images(tmp_path / "in", [(32, 32), (40, 40)])
    result = predict_folder(gather_inputs([tmp_path / "in"]), CodeRunner(image_size=32), tmp_path / "out",
                            options=OutputOptions(overlay=False))
    assert len(result.instances) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["plant000_rgb_label.png", "plant001_rgb_label.png"]
    assert np.all([p.stat().st_size > 0 for p in (tmp_path / "out").iterdir()])
