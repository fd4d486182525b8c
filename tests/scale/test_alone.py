"""The admission that lets a retried series run alone on its worker (flows/alone.py): it waits
for the series already running, holds back those that arrive after it, and lets them go after;
on a GPU shared by several worker processes, the same across the processes (real processes)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

from cohort.flows.alone import Admission, SharedGpu


def _wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_series_alone_waits_for_the_running_ones_and_holds_back_the_later_ones() -> None:
    admission = Admission()
    order: list[str] = []
    first_done = threading.Event()

    def shared(name: str, release: threading.Event | None = None) -> None:
        with admission.shared():
            order.append(f"{name} start")
            if release is not None:
                release.wait(5)
            order.append(f"{name} end")

    def alone() -> None:
        with admission.alone():
            order.append("alone start")
            time.sleep(0.05)
            order.append("alone end")

    running = threading.Thread(target=shared, args=("running", first_done))
    running.start()
    _wait_until(lambda: admission.sharing == 1)
    solo = threading.Thread(target=alone)
    solo.start()
    _wait_until(lambda: admission.waiting_alone == 1)
    later = threading.Thread(target=shared, args=("later",))
    later.start()
    time.sleep(0.05)
    assert order == ["running start"]  # the series alone waits; the later one is held back behind it
    first_done.set()
    for thread in (running, solo, later):
        thread.join(5)
    assert order == ["running start", "running end", "alone start", "alone end", "later start", "later end"]
    assert (admission.sharing, admission.waiting_alone, admission.running_alone) == (0, 0, False)


def test_two_series_alone_take_turns_and_shared_ones_overlap() -> None:
    admission = Admission()
    inside, most_inside = [0], [0]
    lock = threading.Lock()

    def enter(context) -> None:
        with context:
            with lock:
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    def most_at_once(contexts: list) -> int:
        most_inside[0] = 0
        threads = [threading.Thread(target=enter, args=(context,)) for context in contexts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        return most_inside[0]

    assert most_at_once([admission.alone(), admission.alone()]) == 1
    assert most_at_once([admission.shared(), admission.shared(), admission.shared()]) == 3


def test_series_side_by_side_at_most_as_many_as_at_once_says_when_it_says() -> None:
    """``prefetch: auto``: while ``at_once`` is 1 (the model not yet loaded and timed, or one pass at
    a time) a series runs alone, and nothing starts beside it even when the limit grows meanwhile
    (the driver blames a death on it alone); once it is 2, two series run side by side."""
    limit = [1]
    admission = Admission(at_once=lambda: limit[0])
    release = {name: threading.Event() for name in ("sole", "first", "second")}
    order: list[str] = []

    def series(name: str) -> None:
        with admission.shared() as seat:
            order.append(f"{name} start")
            release[name].wait(10)
        order.append(f"{name} end, sole {seat.sole}, accompanied {seat.accompanied}")

    def start(name: str) -> threading.Thread:
        thread = threading.Thread(target=series, args=(name,))
        thread.start()
        return thread

    threads = [start("sole")]  # let in one at a time: nothing starts beside it even once the limit grows
    _wait_until(lambda: admission.sharing == 1)
    threads.append(start("first"))
    time.sleep(0.3)
    limit[0] = 2
    time.sleep(0.7)
    assert order == ["sole start"]
    release["sole"].set()
    _wait_until(lambda: "first start" in order)
    threads.append(start("second"))
    _wait_until(lambda: "second start" in order)  # beside the first, which still runs
    release["second"].set()
    _wait_until(lambda: len(order) == 5)
    release["first"].set()
    for thread in threads:
        thread.join(5)
    assert order == ["sole start", "sole end, sole True, accompanied False", "first start", "second start",
                     "second end, sole False, accompanied True", "first end, sole False, accompanied True"]


def test_while_at_once_is_not_known_series_run_one_at_a_time_and_not_sole() -> None:
    """While the worker loads and times its model (``at_once`` None) a second series waits, and the
    first is not ``sole``: once two passes at once are decided, the second starts beside it."""
    limit: list[int | None] = [None]
    admission = Admission(at_once=lambda: limit[0])
    release, seats = threading.Event(), []

    def series() -> None:
        with admission.shared() as seat:
            seats.append(seat)
            release.wait(10)

    threads = [threading.Thread(target=series) for _ in range(2)]
    threads[0].start()
    _wait_until(lambda: admission.sharing == 1)
    threads[1].start()
    time.sleep(0.7)
    assert admission.sharing == 1 and not seats[0].sole
    limit[0] = 2
    _wait_until(lambda: admission.sharing == 2)
    release.set()
    for thread in threads:
        thread.join(5)
    assert [(seat.sole, seat.accompanied) for seat in seats] == [(False, True), (False, True)]


def _note(log: Path, line: str) -> None:
    with open(log, "a") as file:
        file.write(line + "\n")


def _series_in_process(lock: Path, log: Path, name: str, alone: bool, release=None) -> None:
    """One series in its own process: ``name start`` and ``name end`` in ``log``."""
    gpu = SharedGpu(lock)
    with gpu.alone() if alone else gpu.shared():
        _note(log, f"{name} start")
        if release is not None:
            release.wait(10)
        else:
            time.sleep(0.05)
        _note(log, f"{name} end")


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_series_alone_on_a_shared_gpu_holds_back_the_other_processes(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    lock, log, release = tmp_path / "locks" / "gpu-0", tmp_path / "order.txt", spawn.Event()
    gpu = SharedGpu(lock)

    def start(name: str, alone: bool, release=None):
        process = spawn.Process(target=_series_in_process, args=(lock, log, name, alone, release))
        process.start()
        return process

    running = start("running", False, release)
    _wait_until(lambda: _lines(log) == ["running start"], 30)
    solo = start("alone", True)
    _wait_until(gpu.alone_waiting, 30)
    later = start("later", False)
    time.sleep(1.0)  # a new process needs about this long to import and reach the lock
    assert _lines(log) == ["running start"]
    release.set()
    for process in (running, solo, later):
        process.join(30)
        assert process.exitcode == 0
    assert _lines(log) == ["running start", "running end", "alone start", "alone end", "later start", "later end"]
    assert not gpu.alone_waiting()


def test_a_killed_process_does_not_keep_its_gpu_held(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    lock, log, never = tmp_path / "gpu-0", tmp_path / "order.txt", spawn.Event()
    holder = spawn.Process(target=_series_in_process, args=(lock, log, "killed", False, never))
    holder.start()
    _wait_until(lambda: _lines(log) == ["killed start"], 30)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    entered = threading.Event()

    def alone() -> None:
        with SharedGpu(lock).alone():
            entered.set()

    threading.Thread(target=alone, daemon=True).start()
    assert entered.wait(10)


def test_on_a_shared_gpu_every_series_beside_others_counts_as_accompanied(tmp_path: Path) -> None:
    """Alone in its own process, a series may still lack the memory of another process's series."""
    admission = Admission(SharedGpu(tmp_path / "gpu-0"))
    with admission.shared() as seat:
        assert admission.sharing == 1 and seat.accompanied
    with admission.alone() as seat:
        assert not seat.accompanied
