"""The network gate: how many forward passes of a worker run at once, and on how many threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cohort.ingest import Volume
from cohort.segmentation import ModelSpec
from cohort.segmentation import gate as gate_module
from cohort.segmentation.gate import MIN_SPEEDUP, NetworkGate, passes_at_once
from cohort.segmentation.passes import PassPolicy
from cohort.segmentation.segmenter import Segmenter


@pytest.fixture(autouse=True)
def torch_threads():
    """Tests here change torch's thread count; put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def most_inside_at_once(gate: NetworkGate, callers: int) -> int:
    """Enter ``gate`` from ``callers`` threads at once; how many were inside together at most."""
    inside, most, count_lock = 0, 0, threading.Lock()

    def enter() -> None:
        nonlocal inside, most
        with gate:
            with count_lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.2)
            with count_lock:
                inside -= 1

    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(lambda _: enter(), range(callers)))
    return most


def test_the_gate_admits_its_passes_and_no_more() -> None:
    assert most_inside_at_once(NetworkGate(), 3) == 1
    assert most_inside_at_once(NetworkGate(passes=2), 3) == 2
    with pytest.raises(ValueError, match="at least 1"):
        NetworkGate(passes=0)


def test_a_pass_runs_on_its_share_and_gives_the_thread_its_count_back() -> None:
    torch.set_num_threads(2)
    gate, seen = NetworkGate(passes=2, threads_each=1), {}

    def pass_thread() -> None:
        torch.ones(4).sum()  # this thread has made a parallel call before it reaches the gate
        with gate:
            seen["inside"] = torch.get_num_threads()
        seen["after"] = torch.get_num_threads()

    thread = threading.Thread(target=pass_thread)
    thread.start()
    thread.join()
    assert seen == {"inside": 1, "after": 2}
    assert torch.get_num_threads() == 2


def test_passes_come_from_the_cluster_on_a_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(4)
    monkeypatch.setenv("COHORT_NETWORK_PASSES", "2")
    cpu = NetworkGate.for_device(torch.device("cpu"))
    assert (cpu.passes, cpu.threads_each) == (2, 2)
    gpu = NetworkGate.for_device(torch.device("cuda:0"))
    assert (gpu.passes, gpu.threads_each) == (1, None)
    for unset in ("", "0", "two"):
        monkeypatch.setenv("COHORT_NETWORK_PASSES", unset)
        assert NetworkGate.for_device(torch.device("cpu")).passes == 1
    monkeypatch.setenv("COHORT_NETWORK_PASSES", "8")
    assert NetworkGate.for_device(torch.device("cpu")).threads_each == 1  # never below one thread


@dataclass(frozen=True)
class StandIn:
    """A network as the gate sees it (cohort.segmentation.gate.TiledNetwork)."""

    forward: Callable[[], object]
    gflop: float | None = None

    def tile_gflop(self) -> float | None:
        return self.gflop

    def tile_forward(self) -> Callable[[], object]:
        return self.forward


def test_a_worker_keeps_two_passes_only_where_its_timing_says_they_pay() -> None:
    """``network_passes: auto``: a tile that two threads can run side by side at full speed (a
    sleep stands for a network whose threads mostly wait) gives two passes; one that runs one at a
    time whatever the threads (a lock held through it) gives one, and so does a GPU."""
    torch.set_num_threads(2)
    held = threading.Lock()

    def waits() -> None:
        time.sleep(0.05)

    def serial() -> None:
        with held:
            time.sleep(0.05)

    policy = PassPolicy(2, choose=True)
    side_by_side = NetworkGate.for_device(torch.device("cpu"), StandIn(waits), policy)
    assert (side_by_side.passes, side_by_side.threads_each) == (2, 1) and passes_at_once() == 2
    assert side_by_side.timing.speedup > 1.5
    one_at_a_time = NetworkGate.for_device(torch.device("cpu"), StandIn(serial, gflop=1.0), policy)
    assert (one_at_a_time.passes, one_at_a_time.threads_each) == (1, None) and passes_at_once() == 1
    assert one_at_a_time.timing.speedup < MIN_SPEEDUP and "(1.0 GFLOP)" in one_at_a_time.timing.describe()
    assert NetworkGate.for_device(torch.device("cuda:0"), StandIn(waits), policy).timing is None
    fixed = NetworkGate.for_device(torch.device("cpu"), StandIn(serial), PassPolicy(2))  # network_passes: 2
    assert fixed.passes == 2 and fixed.timing is None


def test_a_large_tile_is_not_timed_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tile with LARGE_TILE_GFLOP_PER_THREAD of work per thread is not run at all; one whose
    work cannot be counted and whose first run takes LARGE_TILE_S is run once."""
    monkeypatch.setattr(gate_module, "LARGE_TILE_S", 0.05)
    torch.set_num_threads(2)
    calls = []

    def large() -> None:
        calls.append(1)
        time.sleep(0.1)

    policy = PassPolicy(2, choose=True)
    counted = NetworkGate.for_device(torch.device("cpu"), StandIn(large, gflop=744.0), policy)
    assert (counted.passes, len(calls), counted.timing.alone_s, counted.timing.pays) == (1, 0, None, False)
    assert "744.0 GFLOP" in counted.timing.describe() and "not timed" in counted.timing.describe()
    uncounted = NetworkGate.for_device(torch.device("cpu"), StandIn(large), policy)
    assert (uncounted.passes, len(calls), uncounted.timing.together_s) == (1, 1, None)
    assert "not timed side by side" in uncounted.timing.describe()


def test_a_tiles_work_counted_on_shapes_is_its_work_computed(fast_spec: ModelSpec, fast_weights: Path) -> None:
    """The meta-device count of one tile equals torch's count of a real forward pass, and leaves
    the loaded parameters as they were."""
    from torch.utils.flop_counter import FlopCounterMode

    predictor = Segmenter(fast_spec, fast_weights, torch.device("cpu")).predictors[0]
    before = {name: value.clone() for name, value in predictor._predictor.network.state_dict().items()}
    counted = predictor.tile_gflop()
    with FlopCounterMode(display=False) as real, torch.inference_mode():
        predictor.tile_forward()()
    assert counted is not None and counted == pytest.approx(real.get_total_flops() / 1e9) and counted > 0.1
    after = predictor._predictor.network.state_dict()
    assert all(value.device.type == "cpu" and torch.equal(before[name], value) for name, value in after.items())


def test_a_loaded_network_is_timed_on_one_tile_and_labels_do_not_change(
        monkeypatch: pytest.MonkeyPatch, fast_spec: ModelSpec, fast_weights: Path, example_sm: Volume) -> None:
    """The segmenter times its first network's tile (the plans' patch size) when the worker's
    policy says to choose, and labels as one pass at a time whatever it chose."""
    torch.set_num_threads(2)
    alone = Segmenter(fast_spec, fast_weights, torch.device("cpu")).segment(example_sm).label_map.labels
    monkeypatch.setenv("COHORT_NETWORK_PASSES", "2")
    monkeypatch.setenv("COHORT_CHOOSE_PASSES", "1")
    timed = Segmenter(fast_spec, fast_weights, torch.device("cpu"))
    gate = timed.predictors[0].gate
    assert gate.timing is not None and gate.timing.alone_s > 0 and gate.timing.gflop > 0 and gate.passes in (1, 2)
    assert gate.passes == (2 if gate.timing.pays else 1) == passes_at_once()
    with ThreadPoolExecutor(2) as pool:
        for labels in pool.map(lambda _: timed.segment(example_sm).label_map.labels, range(2)):
            np.testing.assert_array_equal(labels, alone)


def test_two_passes_at_once_give_the_labels_of_one_at_a_time(monkeypatch: pytest.MonkeyPatch, fast_spec: ModelSpec,
                                                             fast_weights: Path, example_sm: Volume) -> None:
    """Two series on the network together, one thread each, label exactly as one series alone on
    both threads: the thread count does not change nnU-Net's arithmetic on the CPU."""
    torch.set_num_threads(2)
    alone = Segmenter(fast_spec, fast_weights, torch.device("cpu")).segment(example_sm).label_map.labels
    monkeypatch.setenv("COHORT_NETWORK_PASSES", "2")
    shared = Segmenter(fast_spec, fast_weights, torch.device("cpu"))
    assert shared.predictors[0].gate.passes == 2
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda _: shared.segment(example_sm).label_map.labels, range(2)))
    for labels in together:
        np.testing.assert_array_equal(labels, alone)
