"""Entry module for the ``dramatiq`` command: set up Django, then declare the actors.

Dramatiq imports this in every worker process it forks.
"""

from __future__ import annotations

import os

import django

if not os.environ.get("DJANGO_SETTINGS_MODULE"):
    raise RuntimeError("set DJANGO_SETTINGS_MODULE to your project's settings before starting workers")
django.setup()

from .actors import worker_broker  # noqa: E402  (needs Django set up first)

broker = worker_broker()
