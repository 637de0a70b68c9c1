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
    """Per-process and thread-safe; while Redis answers, the send path only tests ``until`` (0.0) for truth."""

    def __init__(self) -> None:
        #: time.monotonic() until which sends skip Redis; 0.0 while Redis answers. Read it; only methods write it.
        self.until = 0.0
        #: When the timeout that started the current cool-down happened (for messages).
        self.since = 0.0
        self._lock = threading.Lock()

    def skipping(self, length: float) -> bool:
        """True when this send should not try Redis; False when it should (it may be the probe).

        When a cool-down has just ended, exactly one caller gets False (the probe):
        it holds the others off for another ``length`` seconds, and ``settle()``
        says how the probe went.
        """
        if time.monotonic() < self.until:
            return True
        if not self.until:
            return False
        with self._lock:
            now = time.monotonic()
            if now < self.until:  # another thread took the probe first
                return True
            if not self.until:
                return False
            self.until = now + length
            return False

    def settle(self, *, timed_out: bool, length: float) -> None:
        """Record how a push that tried Redis went: a timeout starts (or renews) the cool-down."""
        if timed_out and length > 0:
            now = time.monotonic()
            with self._lock:
                self.until = now + length
                self.since = now
        elif self.until:
            with self._lock:
                self.until = 0.0

    def reset(self) -> None:
        with self._lock:
            self.until = 0.0


#: This process's cool-down (reset with the settings, so a test's outage never spills into the next test).
redis_cooldown = Cooldown()
on_config_reset(redis_cooldown.reset)
