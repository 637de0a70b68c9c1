"""The sample application's settings: what a project that sends mail through mailqueue writes.

Its tests (tests.py for Django's runner, test_signup.py for pytest) are the examples of
docs/testing.md, run by tests/test_testing.py under each runner in a process of their own.
"""

from tests.settings import *  # noqa: F403

ROOT_URLCONF = "tests.sample_app.urls"

QUEUED = "mailqueue.backend.EmailBackend"
MAILERS = {
    # Django's own mail (the password reset) and the welcome mail are transactional.
    "default": {"BACKEND": QUEUED, "OPTIONS": {"queue": "critical"}},
    "transactional": {"BACKEND": QUEUED, "OPTIONS": {"queue": "critical"}},
    "bulk": {"BACKEND": QUEUED, "OPTIONS": {"queue": "bulk"}},
    # Providers: never reached by the tests (deliver() hands their mail to locmem stand-ins).
    "postmark": {"BACKEND": "anymail.backends.postmark.EmailBackend", "OPTIONS": {"server_token": "sample-token"}},
    "ses": {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "email-smtp.eu-west-1.amazonaws.com", "port": 587, "use_tls": True},
    },
}
MAILQUEUE = {
    # Nothing listens there, and a refused push raises: the tests show they need no Redis.
    "BROKER_URL": "redis://127.0.0.1:1/0",
    "ON_BROKER_FAILURE": "raise",
    "QUEUES": {
        "critical": {"providers": ["postmark", "ses"], "max_retries": 3},
        "default": {"providers": ["ses", "postmark"]},
        "bulk": {"providers": ["ses"], "max_retries": 1},
    },
    "PROVIDERS": {"postmark": {"rate_limit": "50/s"}, "ses": {"rate_limit": "14/s"}},
}
