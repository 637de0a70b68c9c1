"""Test settings: the demo project's, with a database per test run.

MAILERS and MAILQUEUE are set per test by fixtures (see conftest.py), because
Django's test environment replaces every MAILERS entry with locmem.
"""

import os

import dj_database_url
import psycopg

from project.settings import *  # noqa: F403

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}

# The real PostgreSQL of this machine, as a second database for the tests that run on both
# (``@pytest.mark.django_db(databases=[..., "postgres"])``); left out when none answers.
POSTGRES_URL = os.environ.get("MAILQUEUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_answers(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


if _postgres_answers(POSTGRES_URL):
    DATABASES["postgres"] = {
        **dj_database_url.parse(POSTGRES_URL),
        # Its own test database per run: several runs at once on one server must not share one.
        "TEST": {"NAME": f"test_mailqueue_{os.getpid()}"},
    }
