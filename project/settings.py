"""Settings for the mailqueue demo project, read from the environment (12-factor).

Every variable is optional; the defaults run everything on this machine:

==========================  ==================================  ==========================================
Variable                    Default                             Meaning
==========================  ==================================  ==========================================
``REDIS_URL``               see below                           Redis holding the queues
``MAILQUEUE_NAMESPACE``     ``mailqueue``                       prefix of every mailqueue key in Redis
``DATABASE_URL``            ``sqlite:///<repo>/var/db.sqlite3`` Django database (PostgreSQL when set so)
``DEMO_SMTP_HOST``          ``127.0.0.1``                       SMTP provider "smtp" (the local catcher)
``DEMO_SMTP_PORT``          ``1025``                            its port
``DEMO_BACKUP_SMTP_PORT``   (unset)                             if set, a failover SMTP provider "backup"
``DJANGO_SECRET_KEY``       a random key per process            Django SECRET_KEY
``DJANGO_DEBUG``            ``0``                               Django DEBUG (``1`` to turn on)
``DJANGO_ALLOWED_HOSTS``    ``localhost,127.0.0.1``             comma-separated ALLOWED_HOSTS
==========================  ==================================  ==========================================

Without ``REDIS_URL``, the URL of a running ``make run`` (``var/redis-url``) is read, else
``redis://127.0.0.1:6379/0``: so ``manage.py mailqueue status`` beside ``make run`` sees its private Redis.
Without ``DJANGO_SECRET_KEY`` or ``DJANGO_DEBUG``, project.wsgi logs a loud warning once at startup.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

from project import environment

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

#: The security settings that fell back to a demo default; project.wsgi warns about them once at startup.
DEMO_DEFAULTED = environment.unset(os.environ, ("DJANGO_SECRET_KEY", "DJANGO_DEBUG"))
# Not a fixed development key: one that is in the repository is a key everyone knows.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
# Django hides settings named like secrets; this also masks the password inside URLs (the Redis URL).
DEFAULT_EXCEPTION_REPORTER_FILTER = "project.safety.CredentialFilter"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "mailqueue",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=60,
    )
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_FROM_EMAIL = "mailqueue demo <noreply@example.com>"
SERVER_EMAIL = "server@example.com"
ADMINS = ["ops@example.com"]

SMTP_HOST = os.environ.get("DEMO_SMTP_HOST", "127.0.0.1")
SMTP_PORT = int(os.environ.get("DEMO_SMTP_PORT", "1025"))
BACKUP_SMTP_PORT = os.environ.get("DEMO_BACKUP_SMTP_PORT")

# Queued mailers (what application code sends through) and providers (what
# workers deliver through). Application code only ever names the first kind.
MAILERS = {
    # Plain send_mail() and Django's own flows (password reset) are transactional.
    "default": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"queue": "critical"}},
    "notifications": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"queue": "default"}},
    "bulk": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"queue": "bulk"}},
    "smtp": {
        "BACKEND": "workers.smtp.EmailBackend",
        "OPTIONS": {"host": SMTP_HOST, "port": SMTP_PORT, "timeout": 10},
    },
}
PROVIDERS = ["smtp"]
if BACKUP_SMTP_PORT:
    MAILERS["backup"] = {
        "BACKEND": "workers.smtp.EmailBackend",
        "OPTIONS": {"host": SMTP_HOST, "port": int(BACKUP_SMTP_PORT), "timeout": 10},
    }
    PROVIDERS.append("backup")

MAILQUEUE = {
    "BROKER_URL": environment.redis_url(os.environ, VAR_DIR),
    "NAMESPACE": os.environ.get("MAILQUEUE_NAMESPACE", "mailqueue"),
    "QUEUES": {
        "critical": {"providers": PROVIDERS, "max_retries": 20, "min_backoff": 1_000},
        "default": {"providers": PROVIDERS},
        "bulk": {"providers": PROVIDERS, "max_retries": 5},
    },
    "ROUTES": [{"tag": "newsletter", "queue": "bulk"}],
    # Shared by every worker on every host; a message without a token waits, it does not fail.
    "PROVIDERS": {"smtp": {"rate_limit": os.environ.get("DEMO_SMTP_RATE_LIMIT", "20/s"), "cooldown": 10}},
    "POOLS": {
        "critical": {"queues": ["critical"], "processes": 1, "threads": 4},
        "default": {"queues": ["default"], "processes": 1, "threads": 4},
        "bulk": {"queues": ["bulk"], "processes": 1, "threads": 2},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(asctime)s] [PID %(process)d] [%(name)s] [%(levelname)s] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
