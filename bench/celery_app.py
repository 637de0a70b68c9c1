"""The Celery app of the django-celery-email peer: its worker runs ``celery -A bench.celery_app worker``.

Only the peers' virtual environment has Celery; the driver imports this module for that peer, so the
sending side publishes to the same app (and the same Redis broker) the worker consumes.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
