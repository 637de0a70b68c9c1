"""The demo project as an app: its templates and a demo user for the reset flow."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

DEMO_USER_EMAIL = "demo@example.com"


def create_demo_user(sender: AppConfig, **kwargs: Any) -> None:
    """A user whose password can be reset from the demo page (once auth's tables exist)."""
    if sender.label != "auth":
        return
    from django.contrib.auth import get_user_model  # noqa: PLC0415  (models load after apps)

    user_model = get_user_model()
    if not user_model.objects.filter(email=DEMO_USER_EMAIL).exists():
        user_model.objects.create_user("demo", DEMO_USER_EMAIL, "demo-password-change-me")


class ProjectConfig(AppConfig):
    name = "project"
    verbose_name = "mailqueue demo"

    def ready(self) -> None:
        # Sent per app that has models; this app has none, so listen for auth's.
        post_migrate.connect(create_demo_user, dispatch_uid="mailqueue-demo-user")
