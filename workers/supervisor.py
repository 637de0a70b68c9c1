"""A pool's supervisor: it runs the pool's worker processes, replaces one that dies, and stops only when told.

Dramatiq's own main process stops every worker process when one of them
dies, so one out-of-memory kill would stop a whole queue. Here a process that
dies is logged at ERROR and replaced at once (after a growing pause when it
keeps dying right after its start); SIGTERM, SIGINT or SIGHUP is passed on to
every worker process, which finishes its messages and exits, and then the
supervisor exits too. The signal handler only counts the signal; the main loop
passes it on, so a signal that lands while a worker process is being started
reaches that one too.

Worker processes run in sessions of their own, so a signal meant for the pool
(Ctrl-C in a terminal, a process manager signalling the process group) reaches
them once, through the supervisor; each also stops if the supervisor is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

logger = logging.getLogger("workers.supervisor")

#: Seconds between two looks at the worker processes.
POLL = 0.2
#: A worker process that dies sooner than this after its start is in a crash loop: wait before the next one.
MIN_UPTIME = 10.0
#: Longest pause, in seconds, before replacing a worker process that keeps dying at start.
MAX_RESTART_DELAY = 30.0
#: The signals that stop a pool.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def describe_exit(returncode: int) -> str:
    """'killed by SIGKILL' or 'exit code 3'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class Slot:
    """One of the pool's worker processes, over its successive replacements."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    #: Deaths in a row that came sooner than MIN_UPTIME after the start.
    quick_deaths: int = 0
    #: When (time.monotonic()) the next replacement may start.
    restart_at: float = 0.0
    #: Stop signals passed on to the current process.
    signalled: int = 0


class Supervisor:
    """Runs ``processes`` copies of ``command`` until a stop signal, replacing any that dies."""

    def __init__(self, name: str, command: Sequence[str], processes: int) -> None:
        self.name = name
        self.command = list(command)
        self.slots = [Slot(number) for number in range(1, processes + 1)]
        self.stopping = False
        #: Stop signals received: each is passed on to every worker process, up to two (the second stops at once).
        self.stop_signals = 0

    def run(self) -> int:
        """Supervise until stopped; 0 once every worker process has exited after a stop signal."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop_signal)
        logger.info("pool %s: starting %d worker process(es)", self.name, len(self.slots))
        while True:
            self.check()
            if self.stopping and all(slot.process is None for slot in self.slots):
                logger.info("pool %s: every worker process has stopped", self.name)
                return 0
            time.sleep(POLL)

    def check(self) -> None:
        """Reap the worker processes that exited, and start the ones that are due."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is not None:
                self._exited(slot, now)
            if slot.process is None and not self.stopping and now >= slot.restart_at:
                self._start(slot)
        self._pass_on_stop_signals()

    def _pass_on_stop_signals(self) -> None:
        """Give every running worker process the stop signals it has not had yet (SIGTERM each)."""
        owed_in_all = min(self.stop_signals, 2)
        for slot in self.slots:
            if slot.process is None or slot.process.poll() is not None:
                continue
            for _ in range(owed_in_all - slot.signalled):
                slot.process.send_signal(signal.SIGTERM)
            slot.signalled = max(slot.signalled, owed_in_all)

    def _start(self, slot: Slot) -> None:
        command = [*self.command, "--parent", str(os.getpid())]
        slot.process = subprocess.Popen(command, start_new_session=True)
        slot.started, slot.signalled = time.monotonic(), 0
        logger.info("pool %s: worker process %d started (pid %d)", self.name, slot.number, slot.process.pid)

    def _exited(self, slot: Slot, now: float) -> None:
        assert slot.process is not None
        how, pid = describe_exit(slot.process.returncode), slot.process.pid
        slot.process = None
        if self.stopping:
            logger.info("pool %s: worker process %d (pid %d) stopped: %s", self.name, slot.number, pid, how)
            return
        slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started < MIN_UPTIME else 0
        delay = 0.0 if slot.quick_deaths <= 1 else min(2.0 ** (slot.quick_deaths - 2), MAX_RESTART_DELAY)
        slot.restart_at = now + delay
        logger.error(
            "pool %s: worker process %d (pid %d) died (%s); starting a replacement%s",
            self.name,
            slot.number,
            pid,
            how,
            f" in {delay:.0f} s (it keeps dying at start)" if delay else "",
        )

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only counted here: sent from the main loop (check), where no worker process is half started. A
        # second signal is passed on too: a worker process stops at once on its second SIGTERM.
        if not self.stopping:
            logger.info("pool %s: %s received, stopping the worker processes", self.name, signal.Signals(signum).name)
        self.stopping = True
        self.stop_signals += 1
