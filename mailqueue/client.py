"""The Redis client, and Lua scripts run over one connection per thread.

Every hot path (the request's enqueue, a worker's admit and settle, Dramatiq's
fetch and ack) is one script call. Through redis-py's pool, retry and command
wrappers such a call cost about 45 µs more CPU than the round trip itself on
these machines, so scripts go straight to a connection this thread owns.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.exceptions import InvalidResponse, NoScriptError

from .conf import get_config, on_config_reset

#: Client defaults: fail fast instead of hanging a request when Redis is away.
CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 30,
}


@cache
def redis_client() -> redis.Redis:
    """The process-wide Redis client (thread-safe, pooled) built from settings."""
    config = get_config()
    return redis.Redis.from_url(config.broker_url, **{**CLIENT_DEFAULTS, **config.broker_options})


on_config_reset(redis_client.cache_clear)


def pack(*args: Any) -> bytes:
    """One command in the Redis protocol, packed by hiredis in C."""
    packed: bytes = hiredis.pack_command(args)
    return packed


#: What the reader returns while a reply is incomplete.
_NOT_YET = object()


class Wire:
    """Commands and replies on a connected socket: hiredis packs and parses, nothing else in between.

    redis-py's connection connects (TLS, AUTH, SELECT, timeouts, all from the
    client's settings); after that, its command and reply layers cost about
    20 µs of CPU per round trip on these machines, as much again as the system
    calls. Errors are redis-py's own exception classes, as its parser makes them.
    """

    def __init__(self, connection: Any) -> None:
        connection.connect()  # a no-op when connected
        self.sock: socket.socket = connection._sock
        encoder = connection.encoder
        options: dict[str, Any] = {
            "protocolError": InvalidResponse,
            "replyError": BaseParser.parse_error,
            "notEnoughData": _NOT_YET,  # not False, which is also a reply
        }
        if encoder.decode_responses:
            options.update(encoding=encoder.encoding, errors=encoder.encoding_errors)
        self.reader = hiredis.Reader(**options)
        self.buffer = bytearray(65536)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise redis.TimeoutError("timeout writing to Redis") from None
        except OSError as error:
            raise redis.ConnectionError(f"error writing to Redis: {error}") from None

    def read(self) -> Any:
        """The next reply; an error reply is raised (an error inside an array is returned in it)."""
        reply = self.reader.gets()
        while reply is _NOT_YET:
            try:
                count = self.sock.recv_into(self.buffer)
            except TimeoutError:
                raise redis.TimeoutError("timeout reading from Redis") from None
            except OSError as error:
                raise redis.ConnectionError(f"error reading from Redis: {error}") from None
            if not count:
                raise redis.ConnectionError("Redis closed the connection")
            self.reader.feed(self.buffer, 0, count)  # type: ignore[arg-type]  # (hiredis reads any buffer)
            reply = self.reader.gets()
        if isinstance(reply, redis.RedisError):
            raise reply
        return reply


class _Held:
    """One thread's connection, closed when the thread ends.

    redis-py's connection sits in a reference cycle and would keep its socket
    open until a full garbage collection; this holder is not in one, so it is
    freed (and closes the socket) as soon as the thread's locals go.
    """

    def __init__(self, connection: Any, client: redis.Redis, pid: int) -> None:
        self.connection = connection
        #: The client and process it was made for: a settings change or a fork needs a new one.
        self.client = client
        self.pid = pid
        self.wire: Wire | None = None

    def __del__(self) -> None:
        self.connection.disconnect()


class _ThreadConnection(threading.local):
    """This thread's own connection, made from the client's settings."""

    held: _Held | None = None

    def wire(self) -> Wire:
        """This thread's connection, connected, to speak to directly."""
        self.get()
        assert self.held is not None
        if self.held.wire is None:
            self.held.wire = Wire(self.held.connection)
        return self.held.wire

    def get(self) -> Any:
        client = redis_client()
        held = self.held
        if held is not None and (
            held.client is not client or held.pid != os.getpid() or _closed_by_server(held.connection)
        ):
            self.drop()
            held = None
        if held is None:
            # Made like the pool's connections, but outside the pool: never counted against its limit.
            pool = client.connection_pool
            held = self.held = _Held(pool.connection_class(**pool.connection_kwargs), client, os.getpid())
        return held.connection

    def drop(self) -> None:
        if self.held is not None:
            self.held.connection.disconnect()
        self.held = None


def _closed_by_server(connection: Any) -> bool:
    """True when Redis closed this idle connection (a restart, a timeout): it must not carry a command.

    Checked before each use, with one non-blocking poll, because a command
    written into a dead socket only fails when its reply is read, and by then
    it cannot be told apart from a command Redis ran.
    """
    sock = getattr(connection, "_sock", None)
    if sock is None:
        return False
    # Readable while idle: the end of the stream, or bytes nobody asked for.
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock], [], [], 0)  # Windows has no poll()
    return bool(readable)


_thread_connection = _ThreadConnection()


class LuaScript:
    """A Lua script, run with EVALSHA on this thread's connection (loaded on first use)."""

    def __init__(self, source: str | bytes) -> None:
        self.source = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script; raise redis's own errors (retried only as ``exchange`` says)."""
        command = pack("EVALSHA", self.sha, len(keys), *keys, *args)

        def receive(wire: Wire) -> Any:
            try:
                return wire.read()
            except NoScriptError:
                # First use on this Redis (or after SCRIPT FLUSH or a restart): load it, run it again.
                wire.send(pack("SCRIPT", "LOAD", self.source))
                wire.read()
                wire.send(command)
                return wire.read()

        return exchange(command, receive)


def exchange[T](data: bytes, receive: Callable[[Wire], T]) -> T:
    """Send ``data`` on this thread's connection and ``receive`` the reply, with the one retry policy.

    A connection that fails while the command is being sent is replaced and
    the command sent once more: Redis has not run it. A failure after that is
    raised and never retried, since Redis may have run it; and the connection
    is dropped, so a reply that arrives late is never read as the next one's.
    """
    for attempt in (1, 2):
        sent = False
        try:
            wire = _thread_connection.wire()
            wire.send(data)
            sent = True
            return receive(wire)
        except redis.ConnectionError:
            _thread_connection.drop()
            if sent or attempt == 2:
                raise
        except BaseException:
            # Anything else (an error reply, a timeout, an interruption): never reuse the connection.
            _thread_connection.drop()
            raise
    raise AssertionError("unreachable")


def transaction(commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Run ``commands`` in one MULTI/EXEC on this thread's connection; return EXEC's replies.

    Atomic like a script, in one round trip, with the same retry policy.
    """

    def receive(wire: Wire) -> list[Any]:
        for _ in range(len(commands) + 1):
            wire.read()  # OK, then QUEUED for each command
        replies: list[Any] = wire.read()
        return replies

    replies = exchange(b"".join(pack(*command) for command in (("MULTI",), *commands, ("EXEC",))), receive)
    failed = next((reply for reply in replies if isinstance(reply, redis.ResponseError)), None)
    if failed is not None:
        raise failed  # a command Redis ran and refused (WRONGTYPE): the others still ran
    return replies
