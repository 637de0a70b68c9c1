"""The send path's memory of a Redis that stopped answering: skip it for a short cool-down, then probe.

A Redis that is partitioned away or paused (SIGSTOP, a frozen VM) does not
refuse connections, it just never answers: every ``send_mail()`` would wait for
the socket timeout (5 s by default) before its mail went to the outbox. After
one such timeout, sends in this process go straight to the outbox for
``BROKER_COOLDOWN`` seconds; then one send probes Redis again (the others keep
skipping while it does). The relay never looks here: it always tries Redis.
"""

from __future__ import annotations

import threading
import time

from .conf import on_config_reset


class Cooldown:
    """Per-process and thread-safe; when Redis answers, the send path pays one float comparison."""

    def __init__(self) -> None:
        #: time.monotonic() until which sends skip Redis; 0.0 while Redis answers.
        self._until = 0.0
        #: When the timeout that started the current cool-down happened (for messages).
        self.since = 0.0
        self._lock = threading.Lock()

    def skipping(self, length: float) -> bool:
        """True when this send should not try Redis; False when it should (it may be the probe).

        When a cool-down has just ended, exactly one caller gets False (the probe):
        it holds the others off for another ``length`` seconds, and ``settle()``
        says how the probe went.
        """
        if time.monotonic() < self._until:  # 0.0 while Redis answers: the only work on the usual path
            return True
        if not self._until:
            return False
        with self._lock:
            now = time.monotonic()
            if now < self._until:  # another thread took the probe first
                return True
            if not self._until:
                return False
            self._until = now + length
            return False

    def settle(self, *, timed_out: bool, length: float) -> None:
        """Record how a push that tried Redis went: a timeout starts (or renews) the cool-down."""
        if timed_out and length > 0:
            now = time.monotonic()
            with self._lock:
                self._until = now + length
                self.since = now
        elif self._until:
            with self._lock:
                self._until = 0.0

    def reset(self) -> None:
        with self._lock:
            self._until = 0.0


#: This process's cool-down (reset with the settings, so a test's outage never spills into the next test).
redis_cooldown = Cooldown()
on_config_reset(redis_cooldown.reset)
