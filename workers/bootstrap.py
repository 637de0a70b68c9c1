"""Entry module for the ``dramatiq`` command: set up Django, then declare the actors.

Dramatiq imports this in every worker process it forks.
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from .actors import worker_broker  # noqa: E402  (needs Django set up first)

broker = worker_broker()
