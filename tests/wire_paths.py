"""Runs the hot-path tests on both of ``mailqueue.client``'s paths: the fast one and redis-py's public fallback.

The fallback is taken only when a redis-py upgrade or an unusual connection
class takes the fast path's private attributes away, so nothing else would
ever run it here: the tests below run once per path, by their own names
(``test_x[fast]``, ``test_x[public]``), without any change to their modules.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailqueue import client

PATHS = ("fast", "public")

#: Module -> the tests in it that run on both paths (None: all of them). Chosen for what they
#: prove about the wire, within about 40 s more for the whole suite: the SIGKILL test of
#: test_exactly_once is most of that, and the slow Redis-restart tests of test_outages stay single.
HOT_PATH: dict[str, frozenset[str] | None] = {
    "tests.test_client": None,
    "tests.test_backend": None,
    "tests.test_exactly_once": None,
    "tests.test_outages": frozenset(
        {
            "test_mail_a_provider_took_is_not_sent_again_when_its_record_cannot_be_written",
            "test_the_delivery_record_is_written_once_redis_is_back",
        }
    ),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__
    if module not in HOT_PATH or "redis_wire" not in metafunc.fixturenames:
        return
    names = HOT_PATH[module]
    if names is None or metafunc.function.__name__ in names:
        metafunc.parametrize("redis_wire", PATHS, indirect=True)


@pytest.fixture(autouse=True)
def redis_wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The path this test's Redis scripts take: ``fast``, ``public``, or ``auto`` when not parametrized.

    Set in the environment, so worker processes a test starts take the same
    path; every thread's connection is made again for it.
    """
    path: str = getattr(request, "param", "auto")
    if path == "auto":
        yield path
        return
    if path == "public":
        monkeypatch.setenv(client.WIRE_ENV, "public")
    else:
        monkeypatch.delenv(client.WIRE_ENV, raising=False)
    client.redis_client.cache_clear()  # a new client: each thread's held connection is replaced on next use
    yield path
    monkeypatch.undo()
    client.redis_client.cache_clear()
