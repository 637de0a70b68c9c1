"""WSGI entry point of the demo project (runserver loads it too): warns once if security settings defaulted."""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from project.safety import warn_about_defaults

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_wsgi_application()
# Here, not in settings.py: every worker, relay and manage.py command imports the settings, and one warning
# from the process that serves pages is loud enough; more would be noise people learn to skip.
warn_about_defaults(getattr(settings, "DEMO_DEFAULTED", ()))
