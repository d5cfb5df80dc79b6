"""The thread tuner, fed scripted token times and CPU readings (exact timing
is what a scripted machine is for); and the CPU reading against a real
busy process."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import psutil

from kvchat.engine.threads import (
    FIRST_HOLD_TOKENS,
    HINT_INTERVAL_S,
    CpuLoad,
    ThreadTuner,
)

IDLE_2 = 0.010  # a token's seconds at 2 threads on an idle machine
IDLE_1 = 0.013
BUSY_2 = 0.060  # with a neighbour on one core: barriers stall
BUSY_1 = 0.020


class ScriptedLoad:
    """Two CPUs, and whatever other processes are said to use of them."""

    def __init__(self) -> None:
        self.cpus = 2
        self.others = 0.0

    def restart(self) -> None:
        pass

    def read(self) -> float:
        return self.others


class Machine:
    """Drives a tuner: each token takes the time its thread count takes now."""

    def __init__(self, most: int = 2) -> None:
        self.load = ScriptedLoad()
        self.now = 0.0
        self.tuner = ThreadTuner(most, self.load, clock=lambda: self.now)
        self.times = {1: IDLE_1, 2: IDLE_2}
        self.changes: list[tuple[int, int]] = []  # (token, threads)
        self.token = 0

    def busy(self) -> None:
        self.load.others = 1.0
        self.times = {1: BUSY_1, 2: BUSY_2}

    def idle(self) -> None:
        self.load.others = 0.0
        self.times = {1: IDLE_1, 2: IDLE_2}

    def decode(self, tokens: int) -> None:
        for _ in range(tokens):
            seconds = self.times[self.tuner.threads]
            self.now += seconds
            self.token += 1
            changed = self.tuner.after_token(seconds)
            if changed is not None:
                self.changes.append((self.token, changed))


def test_an_idle_machine_keeps_every_thread() -> None:
    machine = Machine()
    assert machine.tuner.start_turn() == 2
    machine.decode(500)
    assert machine.changes == []
    assert machine.tuner.note == ""


def test_a_busy_neighbour_takes_a_thread_and_the_trial_keeps_it() -> None:
    machine = Machine()
    machine.tuner.start_turn()
    machine.decode(40)
    machine.busy()
    machine.decode(100)
    assert [threads for _, threads in machine.changes] == [1]
    assert machine.tuner.threads == 1
    assert machine.tuner.note == "2 → 1: another process is using a core"
    # The change came within a reading of the neighbour starting.
    assert machine.changes[0][0] - 40 <= HINT_INTERVAL_S / BUSY_2 + 1


def test_the_threads_come_back_when_the_neighbour_leaves() -> None:
    machine = Machine()
    machine.tuner.start_turn()
    machine.decode(20)
    machine.busy()
    machine.decode(100)
    machine.idle()
    machine.decode(100)
    assert [threads for _, threads in machine.changes] == [1, 2]
    assert machine.tuner.note == "2 → 1 → 2: the cores are free again"
    assert machine.changes[1][0] - 120 <= HINT_INTERVAL_S / IDLE_1 + 1


def test_a_neighbour_that_costs_nothing_changes_nothing() -> None:
    machine = Machine()
    machine.tuner.start_turn()
    machine.decode(20)
    # The reading shows a neighbour, and decode is as fast as ever (as when
    # it runs on the other half of a hyperthreaded core).
    machine.load.others = 1.0
    machine.decode(200)
    assert machine.changes == []


def test_a_fewer_count_that_is_slower_is_undone_and_held_off() -> None:
    machine = Machine()
    machine.tuner.start_turn()
    machine.decode(20)
    # The neighbour slows 2 threads a little; 1 thread is slower still.
    machine.load.others = 1.0
    machine.times = {1: BUSY_1, 2: IDLE_2 * 1.2}
    machine.decode(20)
    assert [threads for _, threads in machine.changes] == [1, 2]
    assert machine.tuner.note == "2 → 1 → 2: 1 thread decoded slower"
    undone_at = machine.changes[1][0]
    machine.decode(FIRST_HOLD_TOKENS + 40)
    # One more trial after the hold, not one every reading.
    assert len(machine.changes) == 4
    assert machine.changes[2][0] >= undone_at + FIRST_HOLD_TOKENS
    machine.decode(2 * FIRST_HOLD_TOKENS - 40)
    assert len(machine.changes) == 4  # the hold doubled


def test_slowed_decode_tries_fewer_threads_when_no_neighbour_shows() -> None:
    machine = Machine()
    machine.tuner.start_turn()
    machine.decode(40)
    # A neighbour the counters do not show (in another virtual machine).
    machine.times = {1: BUSY_1, 2: BUSY_2}
    machine.decode(40)
    assert [threads for _, threads in machine.changes] == [1]
    assert machine.tuner.note == "2 → 1: decode slowed down with 2"
    # With no reading to say when it is over, 2 threads are tried again now
    # and then, less often each time they lose, and kept once they win.
    machine.decode(600)
    tried = [token for token, threads in machine.changes if threads == 2]
    gaps = [later - earlier for earlier, later in itertools.pairwise(tried)]
    assert len(tried) >= 3 and gaps == sorted(gaps) and gaps[-1] > gaps[0]
    machine.times = {1: IDLE_1, 2: IDLE_2}
    machine.decode(1200)
    assert machine.tuner.threads == 2
    assert machine.tuner.note.endswith(": 2 threads were faster again")


def test_a_turn_started_on_fewer_threads_says_why() -> None:
    machine = Machine()
    machine.tuner.start_turn()
    machine.decode(20)
    machine.busy()
    machine.decode(60)
    assert machine.tuner.start_turn() == 1  # the prompt too, while the neighbour stays
    machine.decode(30)
    assert machine.tuner.note == "2 → 1: another process is using a core"


def test_prefill_takes_the_count_decode_found() -> None:
    machine = Machine()
    machine.load.others = 1.0  # before any token: no evidence yet
    assert machine.tuner.start_turn() == 2
    machine.busy()
    machine.decode(60)
    assert machine.tuner.start_turn() == 1


def test_a_count_the_person_chose_never_changes() -> None:
    tuner = ThreadTuner(2, None)
    assert tuner.fixed
    assert tuner.start_turn() == 2
    for _ in range(100):
        assert tuner.after_token(BUSY_2) is None
    assert tuner.note == ""


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy, all processes together."""
    times = psutil.cpu_times()
    names = ("user", "nice", "system", "irq", "softirq", "steal")
    return sum(getattr(times, name, 0.0) for name in names)


def test_the_reading_sees_another_busy_process_and_not_this_one() -> None:
    load = CpuLoad()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        load.read()
        time.sleep(1.0)
        others = load.read()
    finally:
        burner.kill()
        burner.wait()
    assert others >= 0.5

    # This process busy for a CPU second: it is not a neighbour. Other
    # processes may be busy meanwhile (another test worker, a build), so the
    # reading is held against the machine's busy time over the same stretch.
    load.read()
    started, machine_before, own_before = time.monotonic(), _machine_busy_s(), time.process_time()
    while time.process_time() - own_before < 1.0:
        pass
    reading = load.read()
    wall = time.monotonic() - started
    machine = _machine_busy_s() - machine_before
    own = time.process_time() - own_before
    assert reading * wall <= machine - own / 2


def test_trials_lost_on_an_idle_machine_do_not_hold_off_a_real_neighbour() -> None:
    machine = Machine()
    machine.tuner.start_turn()
    machine.decode(20)
    # A long stretch where the reading shows something and 1 thread loses:
    # the hold-offs grow.
    machine.load.others = 1.0
    machine.times = {1: BUSY_1, 2: IDLE_2 * 1.2}
    machine.decode(300)
    assert len(machine.changes) >= 4
    held_from = machine.token
    # Then a neighbour that costs 2 threads more than 1 thread made in those
    # trials: it is tried at once, whatever was held off before.
    machine.busy()
    machine.decode(40)
    assert machine.tuner.threads == 1
    assert machine.changes[-1][0] - held_from < 20
