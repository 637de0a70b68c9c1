"""Set up Django, then declare the actors and build the worker broker: importing this makes a worker process.

Each worker process of a pool (``python -m workers.process``, started by the
pool's supervisor, workers/supervisor.py) imports it once its signal handlers
are in place. It is also the module to give the plain ``dramatiq`` command
(``dramatiq workers.bootstrap``), which imports it in every process it forks;
that main process stops every worker when one dies, which a pool does not.
"""

from __future__ import annotations

import os

import django

if not os.environ.get("DJANGO_SETTINGS_MODULE"):
    raise RuntimeError("set DJANGO_SETTINGS_MODULE to your project's settings before starting workers")
django.setup()

from .actors import worker_broker  # noqa: E402  (needs Django set up first)

broker = worker_broker()
