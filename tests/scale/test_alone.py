"""The admission that lets a retried series run alone on its worker (flows/alone.py): it waits
for the series already running, holds back those that arrive after it, and lets them go after."""

from __future__ import annotations

import threading
import time

from cohort.flows.alone import Admission


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
