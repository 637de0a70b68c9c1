"""Django app configuration: registers mailqueue's system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

from .checks import check_configuration


class MailQueueConfig(AppConfig):
    """The mailqueue app."""

    name = "mailqueue"
    verbose_name = "Mail queue"

    def ready(self) -> None:
        checks.register(check_configuration, "mailqueue")
