"""Test settings: the demo project's, with a database per test run.

MAILERS and MAILQUEUE are set per test by fixtures (see conftest.py), because
Django's test environment replaces every MAILERS entry with locmem.
"""

from project.settings import *  # noqa: F403

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {"version": 1, "disable_existing_loggers": False}
