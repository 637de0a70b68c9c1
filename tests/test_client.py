"""mailqueue.client against the real Redis: the retry policy, NOSCRIPT, errors, and which path is taken.

Every test here runs twice, on the fast path and on redis-py's public fallback
(tests/wire_paths.py), and must behave the same on both.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import warnings
from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError

from mailqueue import client
from mailqueue.client import LuaScript, PublicWire, Wire, exchange
from mailqueue.config_reader import find_problems
from mailqueue.exceptions import MailQueueImproperlyConfigured

INCR = LuaScript("return redis.call('INCR', KEYS[1])")
ECHO = LuaScript("return ARGV[1]")
LOCMEM = {"locmem": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}


class PublicOnly:
    """A connection with redis-py's public API only, as another redis-py (or another class) may have it.

    Each call goes to a real ``redis.Connection``; nothing private is reachable from outside.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.inner = redis.Connection(**kwargs)

    def connect(self) -> None:
        self.inner.connect()

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self.inner.disconnect(*args, **kwargs)

    def can_read(self, timeout: float = 0) -> bool:
        return self.inner.can_read(timeout)

    def pack_command(self, *args: Any) -> list[bytes]:
        return self.inner.pack_command(*args)

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.inner.send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.read_response(*args, **kwargs)


@pytest.fixture
def wired(configure) -> None:
    configure(providers=LOCMEM)


def held() -> Any:
    return client._thread_connection.held


def socket_of(wire: Wire | PublicWire) -> socket.socket:
    if isinstance(wire, Wire):
        return wire.sock
    connection = wire.connection
    return (connection.inner if isinstance(connection, PublicOnly) else connection)._sock


def read_all(count: int):
    def receive(wire: Wire | PublicWire) -> list[Any]:
        return [wire.read() for _ in range(count)]

    return receive


def this_connections_id() -> int:
    return exchange((("CLIENT", "ID"),), read_all(1))[0]


def test_the_path_is_the_fast_one_unless_the_public_one_is_forced(wired, redis_wire) -> None:
    assert client.wire_path() == ("public" if redis_wire == "public" else "fast")
    assert type(held().wire) is (PublicWire if redis_wire == "public" else Wire)
    assert ECHO([], ["hello"]) == b"hello"


def test_a_connection_class_without_the_private_attributes_falls_back_by_itself(
    configure, namespace, monkeypatch, caplog
) -> None:
    monkeypatch.delenv(client.WIRE_ENV, raising=False)
    monkeypatch.setattr(client, "_announced", set())
    configure(providers=LOCMEM, BROKER_OPTIONS={"connection_class": PublicOnly})
    caplog.set_level(logging.INFO, logger="mailqueue.client")

    results: list[Any] = []

    def work() -> None:
        results.append((client.wire_path(), INCR([f"{namespace}:n"], [])))
        results.append(INCR([f"{namespace}:n"], []))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
        thread.join()  # one after the other: the counts below are then exact
    assert results == [("public", 1), 2, ("public", 3), 4]
    announced = [record for record in caplog.records if record.name == "mailqueue.client"]
    assert len(announced) == 1  # once, however many connections take the fallback
    assert announced[0].levelno == logging.INFO
    assert "PublicOnly keeps no connected socket in _sock" in announced[0].getMessage()


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("HAVE_HIREDIS", False, "hiredis is not installed"),
        ("_parse_error", None, "redis-py has no redis._parsers.base.BaseParser.parse_error"),
        ("redis.__version__", "9.0.0", "redis-py 9.0.0 is not a version it was written for (8.x)"),
    ],
    ids=["no-hiredis", "parser-moved", "redis-py-9"],
)
def test_a_redis_py_the_fast_path_was_not_written_for_gets_the_fallback(
    wired, namespace, monkeypatch, caplog, name, value, reason
) -> None:
    monkeypatch.delenv(client.WIRE_ENV, raising=False)
    monkeypatch.setattr(client, "_announced", set())
    monkeypatch.setattr(redis if name.startswith("redis.") else client, name.removeprefix("redis."), value)
    caplog.set_level(logging.INFO, logger="mailqueue.client")
    client._thread_connection.drop()
    assert client.wire_path() == "public"
    assert INCR([f"{namespace}:n"], []) == 1
    logged = [record.getMessage() for record in caplog.records if record.name == "mailqueue.client"]
    assert [message.rsplit(": ", 1)[-1] for message in logged] == [reason]


def test_a_failed_send_is_sent_once_more_on_a_fresh_connection(wired, namespace, monkeypatch) -> None:
    key = f"{namespace}:n"
    assert INCR([key], []) == 1
    first = held()
    socket_of(first.wire).shutdown(socket.SHUT_WR)  # the next write fails (EPIPE), before Redis sees a byte
    # As if Redis closed it just after the check made before each use: the send is what fails.
    monkeypatch.setattr(first.wire, "closed_by_server", lambda: False)
    assert INCR([key], []) == 2  # ran once, on a new connection
    assert held() is not first


def test_a_connection_redis_closed_while_idle_is_replaced_before_it_carries_a_command(
    wired, namespace, redis_client
) -> None:
    key = f"{namespace}:n"
    assert INCR([key], []) == 1
    first = held()
    redis_client.client_kill_filter(_id=this_connections_id())
    deadline = time.monotonic() + 5
    while not first.wire.closed_by_server() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert INCR([key], []) == 2
    assert held() is not first


@pytest.mark.parametrize("failure", ["timeout", "client-kill"])
def test_a_failed_read_is_never_retried(configure, namespace, redis_client, failure) -> None:
    configure(providers=LOCMEM, BROKER_OPTIONS={"socket_timeout": 0.3} if failure == "timeout" else {})
    key = f"{namespace}:n"
    # INCR runs at once; BLPOP then holds the reply back (only this connection waits, not the shared Redis).
    commands = (("INCR", key), ("BLPOP", f"{namespace}:never", 3))
    if failure == "client-kill":
        killer = threading.Timer(0.3, redis_client.client_kill_filter, kwargs={"_id": this_connections_id()})
        killer.start()
    expected = redis.TimeoutError if failure == "timeout" else redis.ConnectionError
    with pytest.raises(expected):
        exchange(commands, read_all(2))
    assert held() is None  # dropped: a late reply is never read as the next command's
    assert redis_client.get(key) == b"1"  # sent once, not twice
    assert INCR([key], []) == 2  # the next call gets its own reply, on a new connection


def test_redis_unreachable_is_a_connection_error(configure) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    configure(providers=LOCMEM, BROKER_URL=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(redis.ConnectionError):
        ECHO([], ["x"])
    assert held() is None


def test_a_script_redis_does_not_have_is_loaded_and_run_in_the_same_call(wired, namespace, redis_client) -> None:
    script = LuaScript(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCR', KEYS[1])")  # never loaded before
    assert redis_client.script_exists(script.sha) == [False]
    assert script([f"{namespace}:n"], []) == 1
    assert redis_client.script_exists(script.sha) == [True]
    connection = held()
    assert script([f"{namespace}:n"], []) == 2
    assert held() is connection  # NOSCRIPT is an answer, not a failure: the connection stays


@pytest.mark.parametrize(
    ("call", "error", "text"),
    [
        (lambda key: LuaScript("return redis.error_reply('MYERR refused')")([], []), redis.ResponseError, "refused"),
        (lambda key: INCR([key], []), redis.ResponseError, "not an integer"),
        (lambda key: exchange((("EVALSHA", "0" * 40, 0),), read_all(1)), NoScriptError, "No matching script"),
    ],
    ids=["error-reply", "script-error", "noscript"],
)
def test_error_replies_raise_redis_py_s_classes(wired, namespace, redis_client, call, error, text) -> None:
    key = f"{namespace}:s"
    redis_client.set(key, "x")
    with pytest.raises(error, match=text):
        call(key)
    assert ECHO([], ["after"]) == b"after"


def test_replies_are_decoded_as_the_client_is_configured(configure) -> None:
    configure(providers=LOCMEM, BROKER_OPTIONS={"decode_responses": True})
    assert ECHO([], ["é"]) == "é"
    configure(providers=LOCMEM)
    assert ECHO([], ["é"]) == "é".encode()


def test_a_settings_change_gives_a_new_connection(wired, configure, namespace) -> None:
    assert INCR([f"{namespace}:n"], []) == 1
    first = held()
    configure(providers=LOCMEM)
    assert INCR([f"{namespace}:n"], []) == 2
    assert held() is not first
    assert not first.connection.is_connected if isinstance(first.connection, redis.Connection) else True


def test_a_forked_child_makes_its_own_connection_and_leaves_the_parent_s_alone(wired, namespace) -> None:
    key = f"{namespace}:n"
    assert INCR([key], []) == 1
    parent = held()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: the child only runs a script
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if INCR([key], []) == 2 and held() is not parent and held().pid == os.getpid() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert INCR([key], []) == 3
    assert held() is parent


def resp_version(info: bytes | str) -> str:
    """The ``resp=`` field of a CLIENT INFO line."""
    text = info.decode() if isinstance(info, bytes) else info
    return dict(field.split("=", 1) for field in text.split())["resp"]


@pytest.mark.parametrize(
    ("url_query", "options"),
    [("", {}), ("?protocol=2", {}), ("", {"protocol": 2}), ("", {"protocol": "2"})],
    ids=["unset", "in-url", "in-options", "in-options-as-text"],
)
def test_every_connection_mailqueue_makes_speaks_resp2(configure, redis_url, url_query, options) -> None:
    # redis-py 8 would speak RESP3 with protocol unset: mailqueue sets 2, on its script path and on the pool alike.
    assert redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("protocol") is None
    configure(providers=LOCMEM, BROKER_URL=redis_url + url_query, BROKER_OPTIONS=options)
    assert resp_version(exchange((("CLIENT", "INFO"),), read_all(1))[0]) == "2"
    pool_client = client.redis_client()
    assert resp_version(pool_client.execute_command("CLIENT", "INFO")) == "2"  # monitoring, dead letters, Dramatiq
    with pool_client.pipeline(transaction=False) as pipe:
        pipe.execute_command("CLIENT", "INFO")
        assert resp_version(pipe.execute()[0]) == "2"


@pytest.mark.parametrize(
    ("url_query", "options", "where"),
    [
        ("?protocol=3", {}, "The 'protocol' parameter of MAILQUEUE['BROKER_URL']"),
        ("", {"protocol": 3}, "MAILQUEUE['BROKER_OPTIONS']['protocol']"),
    ],
    ids=["in-url", "in-options"],
)
def test_resp3_anywhere_is_refused_by_check_e017(configure, redis_url, url_query, options, where) -> None:
    configure(providers=LOCMEM, BROKER_URL=redis_url + url_query, BROKER_OPTIONS=options)
    problems = [problem for problem in find_problems() if problem.id == "mailqueue.E017"]
    assert [problem.msg for problem in problems] == [f"{where} must be 2 (RESP2), not 3."]
    with pytest.raises(MailQueueImproperlyConfigured, match="mailqueue.E017"):
        ECHO([], ["x"])  # nothing runs on a configuration with a problem, so no connection ever speaks RESP3
