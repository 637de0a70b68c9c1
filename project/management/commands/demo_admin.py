"""``manage.py demo_admin``: a staff login for the local demo's admin and dashboard, a new password each run.

``make run`` calls it before starting the processes and prints the login. It refuses to run with any
settings but the demo's own on a local database: a known user with a printed password has no place elsewhere.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

USERNAME = "admin"
DEMO_SETTINGS = "project.settings"


class Command(BaseCommand):
    help = "Create or reset the demo's local admin user (demo settings only) and print its password."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.SETTINGS_MODULE != DEMO_SETTINGS:
            raise CommandError(f"demo_admin runs only with DJANGO_SETTINGS_MODULE={DEMO_SETTINGS}")
        if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":
            raise CommandError("demo_admin runs only on the demo's local SQLite database (DATABASE_URL is set)")
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username=USERNAME, defaults={"email": "admin@example.com"})
        user.is_staff = user.is_superuser = user.is_active = True
        user.set_password(password)
        user.save()
        port = os.environ.get("WEB_PORT", "8000")
        self.stdout.write(
            f"Admin: http://127.0.0.1:{port}/admin/  user {USERNAME}  password {password}  (this run only)\n"
            f"Dashboard (same login): http://127.0.0.1:{port}/mailqueue/"
        )
