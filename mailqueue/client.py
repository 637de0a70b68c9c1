"""The Redis client, and Lua scripts run over one connection per thread.

Every hot path (the request's enqueue, a worker's admit and settle, Dramatiq's
fetch and ack) is one script call. Through redis-py's pool, retry and command
wrappers such a call cost about 45 µs more CPU than the round trip itself on
these machines, so scripts go straight to a connection this thread owns: on
the fast path (``Wire``, redis-py's private socket and error mapping) when this
redis-py has them, else on its public connection API (``PublicWire``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
from redis.exceptions import AuthenticationError, InvalidResponse, NoPermissionError, NoScriptError

from .conf import get_config, on_config_reset

try:
    import hiredis
except ImportError:  # not a dependency of redis-py, nor of mailqueue: the public path works without it
    HAVE_HIREDIS = False
else:
    HAVE_HIREDIS = True

#: redis-py's mapping of an error reply to its exception class (NOSCRIPT -> NoScriptError ...), a private API.
_parse_error: Callable[[str], redis.RedisError] | None
try:
    from redis._parsers.base import BaseParser

    _parse_error = BaseParser.parse_error
except (ImportError, AttributeError):  # moved or gone in this redis-py: the fast path stands aside
    _parse_error = None

#: Client defaults: fail fast instead of hanging a request when Redis is away.
CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 30,
}


#: The RESP version of every connection mailqueue makes. ``Wire`` reads replies itself and is written for RESP2;
#: redis-py 8 would speak RESP3 when ``protocol`` is unset, so it is always set (check E017 refuses another).
PROTOCOL = 2


@cache
def redis_client() -> redis.Redis:
    """The process-wide Redis client (thread-safe, pooled) built from settings, speaking RESP2."""
    config = get_config()
    return redis.Redis.from_url(config.broker_url, **{**CLIENT_DEFAULTS, **config.broker_options, "protocol": PROTOCOL})


on_config_reset(redis_client.cache_clear)


def redacted_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}" if user and parts.scheme != "unix" else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "?" + urlencode(
            [(key, "***" if key.lower() == "password" else value) for key, value in pairs], safe="*"
        )
    # Not urlunsplit(): it drops the empty authority of unix:///path.
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


#: An ACL refusal raised from inside a script (EVALSHA) comes back as a plain error reply, worded by the server.
_SCRIPT_ACL_REFUSAL = re.compile(r"NOPERM|no permissions? to|can't access|can't run this command", re.IGNORECASE)

#: Where docs/operating.md lists the ACL a deployment needs.
ACL_DOC = "docs/operating.md, 'A Redis user for mailqueue'"


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def access_problem(error: BaseException) -> str | None:
    """What to fix when ``error`` is Redis refusing mailqueue's credentials, ACL permissions or TLS; else None.

    These are not outages: waiting does not help, somebody must change a setting
    (or the server's ACL). A timeout, a refused connection or a full Redis is an
    outage and gives None; so is a TLS handshake that times out, which a plain
    port and a paused TLS server cause alike.
    """
    if isinstance(error, AuthenticationError):
        return (
            "Redis refused the credentials: check the user name and password in MAILQUEUE['BROKER_URL'] "
            "(or BROKER_OPTIONS 'username'/'password') against the server's ACL (ACL LIST) or requirepass"
        )
    if isinstance(error, NoPermissionError) or (
        isinstance(error, redis.ResponseError) and _SCRIPT_ACL_REFUSAL.search(str(error))
    ):
        return (
            "the Redis user lacks a permission mailqueue needs: grant it the commands and the key patterns "
            f"~<NAMESPACE> ~<NAMESPACE>:* listed in {ACL_DOC}"
        )
    for cause in _causes(error):
        if isinstance(cause, ssl.SSLError):
            return (
                f"the TLS connection to Redis failed ({cause}): check the server's certificate, "
                "BROKER_OPTIONS 'ssl_ca_certs'/'ssl_cert_reqs', and that BROKER_URL's scheme (rediss:// for TLS) "
                "matches what the port serves"
            )
    return None


#: Set to ``public`` to make every new connection take redis-py's public path (the fallback).
WIRE_ENV = "MAILQUEUE_REDIS_WIRE"

#: redis-py major versions whose ``Connection`` internals the fast path was written against (and tested with).
FAST_PATH_REDIS_MAJORS = (8,)

logger = logging.getLogger(__name__)

#: What the reader returns while a reply is incomplete.
_NOT_YET = object()


class Wire:
    """The fast path: commands and replies on a connected socket, hiredis packs and parses, nothing in between.

    redis-py's connection connects (TLS, AUTH, SELECT, timeouts, all from the
    client's settings); after that, its command and reply layers cost about
    20 µs of CPU per round trip on these machines, as much again as the system
    calls. Errors are redis-py's own exception classes, as its parser makes them.
    Reads redis-py's private ``Connection._sock`` and parser error mapping, so it
    is used only where ``fast_path_problem()`` finds nothing wrong.
    """

    path = "fast"

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.sock: socket.socket = connection._sock
        encoder = connection.encoder
        options: dict[str, Any] = {
            "protocolError": InvalidResponse,
            "replyError": _parse_error,
            "notEnoughData": _NOT_YET,  # not False, which is also a reply
        }
        if encoder.decode_responses:
            options.update(encoding=encoder.encoding, errors=encoder.encoding_errors)
        self.reader = hiredis.Reader(**options)
        self.buffer = bytearray(65536)

    def send(self, *commands: tuple[Any, ...]) -> None:
        """Write ``commands`` (argument tuples) in one ``sendall``."""
        data = (
            hiredis.pack_command(commands[0]) if len(commands) == 1 else b"".join(map(hiredis.pack_command, commands))
        )
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

    def closed_by_server(self) -> bool:
        """True when Redis closed this idle connection (a restart, a timeout): it must not carry a command.

        Checked before each use, with one non-blocking poll, because a command
        written into a dead socket only fails when its reply is read, and by then
        it cannot be told apart from a command Redis ran.
        """
        # Readable while idle: the end of the stream, or bytes nobody asked for.
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([self.sock], [], [], 0)  # Windows has no poll()
        return bool(readable)


class PublicWire:
    """The fallback: the same exchange through redis-py's public ``Connection`` API only.

    ``send_packed_command`` writes, ``read_response`` parses with redis-py's
    own parser and raises its own errors, and ``can_read`` is the check the
    pool itself makes before lending a connection. Same round trips, same
    errors; only more CPU per call (see docs/design.md).
    """

    path = "public"

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def send(self, *commands: tuple[Any, ...]) -> None:
        """Write ``commands`` (argument tuples) in one write, as the fast path does; no health-check PING."""
        connection = self.connection
        chunks = [chunk for command in commands for chunk in connection.pack_command(*command)]
        connection.send_packed_command(chunks if len(chunks) == 1 else [b"".join(chunks)], check_health=False)

    def read(self) -> Any:
        """The next reply; an error reply is raised (an error inside an array is returned in it)."""
        return self.connection.read_response()

    def closed_by_server(self) -> bool:
        """As ``Wire.closed_by_server``: unread bytes or a closed stream mean the connection must go."""
        try:
            return bool(self.connection.can_read(timeout=0))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return True


def fast_path_problem(connection: Any) -> str | None:
    """Why the fast path cannot speak on this connected ``connection``, or None when it can."""
    if os.environ.get(WIRE_ENV) == "public":
        return f"{WIRE_ENV}=public"
    if not HAVE_HIREDIS:
        return "hiredis is not installed"
    if _parse_error is None:
        return "redis-py has no redis._parsers.base.BaseParser.parse_error"
    major = redis.__version__.split(".")[0]
    if not major.isdigit() or int(major) not in FAST_PATH_REDIS_MAJORS:
        written_for = ", ".join(f"{known}.x" for known in FAST_PATH_REDIS_MAJORS)
        return f"redis-py {redis.__version__} is not a version it was written for ({written_for})"
    sock = getattr(connection, "_sock", None)
    if not all(callable(getattr(sock, name, None)) for name in ("sendall", "recv_into", "fileno")):
        return f"{type(connection).__qualname__} keeps no connected socket in _sock"
    encoder = getattr(connection, "encoder", None)
    if not all(hasattr(encoder, name) for name in ("decode_responses", "encoding", "encoding_errors")):
        return f"{type(connection).__qualname__} has no redis-py encoder"
    return None


#: The reasons already logged: the choice is announced once per process and reason, not per connection.
_announced: set[str] = set()


def open_wire(connection: Any) -> Wire | PublicWire:
    """Connect ``connection`` and put the fastest path that works on it."""
    connection.connect()  # a no-op when connected
    problem = fast_path_problem(connection)
    if problem is None:
        return Wire(connection)
    if problem not in _announced:
        _announced.add(problem)
        logger.info("Redis scripts take redis-py's public connection API (slower than the fast path): %s", problem)
    return PublicWire(connection)


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
        self.wire: Wire | PublicWire = open_wire(connection)

    def __del__(self) -> None:
        self.connection.disconnect()


class _ThreadConnection(threading.local):
    """This thread's own connection, made from the client's settings."""

    held: _Held | None = None

    def wire(self) -> Wire | PublicWire:
        """This thread's connection, connected, to speak to directly."""
        client = redis_client()
        held = self.held
        if held is not None and (held.client is not client or held.pid != os.getpid() or held.wire.closed_by_server()):
            self.drop()
            held = None
        if held is None:
            # Made like the pool's connections, but outside the pool: never counted against its limit
            # (the pool's public make_connection() would count it, and it is never given back).
            pool = client.connection_pool
            held = self.held = _Held(pool.connection_class(**pool.connection_kwargs), client, os.getpid())
        return held.wire

    def drop(self) -> None:
        if self.held is not None:
            self.held.connection.disconnect()
        self.held = None


_thread_connection = _ThreadConnection()


def wire_path() -> str:
    """Which path this thread's connection takes: ``fast`` or ``public``."""
    return _thread_connection.wire().path


class LuaScript:
    """A Lua script, run with EVALSHA on this thread's connection (loaded on first use)."""

    def __init__(self, source: str | bytes) -> None:
        self.source = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script; raise redis's own errors (retried only as ``exchange`` says)."""
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)

        def receive(wire: Wire | PublicWire) -> Any:
            try:
                return wire.read()
            except NoScriptError:
                # First use on this Redis (or after SCRIPT FLUSH or a restart): load it, run it again.
                wire.send(("SCRIPT", "LOAD", self.source))
                wire.read()
                wire.send(command)
                return wire.read()

        return exchange((command,), receive)


def exchange[T](commands: Sequence[tuple[Any, ...]], receive: Callable[[Wire | PublicWire], T]) -> T:
    """Send ``commands`` on this thread's connection and ``receive`` the reply, with the one retry policy.

    A connection that fails while the commands are being sent is replaced and
    they are sent once more: Redis has not run them. A failure after that is
    raised and never retried, since Redis may have run them; and the connection
    is dropped, so a reply that arrives late is never read as the next one's.
    """
    for attempt in (1, 2):
        sent = False
        try:
            wire = _thread_connection.wire()
            wire.send(*commands)
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
