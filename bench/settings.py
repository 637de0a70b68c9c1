"""Django settings for every benchmarked system, chosen by ``BENCH_SYSTEM``; the harness sets the ``BENCH_*`` variables.

One module for all of them, so that every system sends the same messages to the same sink with the same
Django defaults, and differs only in its mail settings. It imports nothing from mailqueue, because the
peers run it in their own virtual environments (some on an older Django).
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlsplit

SYSTEM = os.environ.get("BENCH_SYSTEM", "mailqueue")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("BENCH_NAMESPACE", "mqbench")
SMTP_PORT = int(os.environ.get("BENCH_SMTP_PORT", "2525"))
HTTP_PORT = int(os.environ.get("BENCH_HTTP_PORT", "2580"))
#: "smtp" or "esp": what the workers (or a synchronous backend) deliver through.
PROVIDER = os.environ.get("BENCH_PROVIDER", "smtp")
#: A PostgreSQL URL, or a SQLite file path (default: in memory).
DATABASE = os.environ.get("BENCH_DATABASE", ":memory:")
WORK_DIR = os.environ.get("BENCH_WORK_DIR") or tempfile.gettempdir()
#: mailqueue's message log: "on" or "off" sets LOG["ENABLED"]; unset leaves mailqueue's default (on, as a user gets).
LOG = os.environ.get("BENCH_LOG", "")
#: mailqueue's cluster counters: "on" or "off" sets MONITOR["COUNTERS"]; unset leaves mailqueue's default (on).
COUNTERS = os.environ.get("BENCH_COUNTERS", "")


def _database(url: str) -> dict[str, object]:
    if url.startswith("postgres"):
        parts = urlsplit(url)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parts.path.lstrip("/"),
            "USER": parts.username or "postgres",
            "PASSWORD": parts.password or "",
            "HOST": parts.hostname or "127.0.0.1",
            "PORT": str(parts.port or 5432),
        }
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": url}


SECRET_KEY = "bench-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {"default": _database(DATABASE)}
INSTALLED_APPS: list[str] = ["django.contrib.contenttypes"]
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
MEDIA_ROOT = os.path.join(WORK_DIR, "media")
DEFAULT_FROM_EMAIL = "shop@example.com"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

SMTP_MAILER = {
    "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
    "OPTIONS": {"host": "127.0.0.1", "port": SMTP_PORT, "timeout": 30},
}
ESP_MAILER = {
    "BACKEND": "anymail.backends.postmark.EmailBackend",
    "OPTIONS": {"api_url": f"http://127.0.0.1:{HTTP_PORT}/", "server_token": "bench"},
}
PROVIDER_MAILER = ESP_MAILER if PROVIDER == "esp" else SMTP_MAILER
#: mailqueue's workers send SMTP with its own backend: Django's, with the byte-identical fast rendering.
WORKER_SMTP_MAILER = {**SMTP_MAILER, "BACKEND": "workers.smtp.EmailBackend"}

# Peers written before Django 6.1's MAILERS read the legacy EMAIL_* settings instead (Django 6.1 refuses
# both at once), so only those set EMAIL_HOST and EMAIL_PORT below.
if SYSTEM == "mailqueue":
    INSTALLED_APPS += ["mailqueue"]
    MAILERS = {
        "default": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"queue": "default"}},
        # The idle-latency bench's critical-behind-bulk phase; every other measurement uses "default" only.
        "transactional": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"queue": "critical"}},
        "bulk": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"queue": "bulk"}},
        "provider": ESP_MAILER if PROVIDER == "esp" else WORKER_SMTP_MAILER,
    }
    MAILQUEUE = {
        "BROKER_URL": REDIS_URL,
        "NAMESPACE": NAMESPACE,
        "ON_COMMIT": False,
        "QUEUES": {queue: {"providers": ["provider"]} for queue in ("default", "critical", "bulk")},
    }
    if LOG:
        MAILQUEUE["LOG"] = {"ENABLED": LOG == "on"}
    if COUNTERS:
        MAILQUEUE["MONITOR"] = {"COUNTERS": COUNTERS == "on"}
elif SYSTEM == "django-smtp":
    MAILERS = {"default": PROVIDER_MAILER}
elif SYSTEM == "locmem":
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
elif SYSTEM == "django-celery-email":
    # get_connection(backend=...) inside its task refuses MAILERS: legacy settings only.
    INSTALLED_APPS += ["djcelery_email"]
    EMAIL_BACKEND = "djcelery_email.backends.CeleryEmailBackend"
    CELERY_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST, EMAIL_PORT, EMAIL_TIMEOUT = "127.0.0.1", SMTP_PORT, 30
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_IGNORE_RESULT = True
    CELERY_WORKER_HIJACK_ROOT_LOGGER = False
elif SYSTEM == "django-post-office":
    INSTALLED_APPS += ["post_office"]
    MAILERS = {"default": {"BACKEND": "post_office.backends.EmailBackend"}, "smtp": SMTP_MAILER}
    POST_OFFICE = {"DEFAULT_MAILER": "smtp", "LOG_LEVEL": 0}
elif SYSTEM == "django-mailer":
    # Its engine calls get_connection(backend=...), which refuses MAILERS: legacy settings only.
    INSTALLED_APPS += ["mailer"]
    EMAIL_BACKEND = "mailer.backend.DbBackend"
    MAILER_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST, EMAIL_PORT, EMAIL_TIMEOUT = "127.0.0.1", SMTP_PORT, 30
    # Row locks (SELECT ... FOR UPDATE NOWAIT) share the queue between processes; the file lock would not.
    MAILER_USE_FILE_LOCK = False
elif SYSTEM == "django-dramatiq-email":
    INSTALLED_APPS += ["django_dramatiq", "django_dramatiq_email"]
    EMAIL_BACKEND = "django_dramatiq_email.backends.DramatiqEmailBackend"
    DRAMATIQ_EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST, EMAIL_PORT, EMAIL_TIMEOUT = "127.0.0.1", SMTP_PORT, 30
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "OPTIONS": {"url": REDIS_URL, "namespace": NAMESPACE},
        "MIDDLEWARE": [
            "dramatiq.middleware.AgeLimit",
            "dramatiq.middleware.TimeLimit",
            "dramatiq.middleware.Callbacks",
            "dramatiq.middleware.Retries",
            "django_dramatiq.middleware.DbConnectionsMiddleware",
        ],
    }
    DRAMATIQ_TASKS_DATABASE = "default"
else:
    raise RuntimeError(f"unknown BENCH_SYSTEM {SYSTEM!r}")
