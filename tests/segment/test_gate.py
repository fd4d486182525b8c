"""The network gate: how many forward passes of a worker run at once, and on how many threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from cohort.ingest import Volume
from cohort.segmentation import ModelSpec
from cohort.segmentation.gate import NetworkGate
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
