"""The operator's dashboard and /metrics, mounted by the project: ``path("mailqueue/", include("mailqueue.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import views
from .metrics import metrics_view

app_name = "mailqueue"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard.json", views.dashboard_json, name="dashboard-json"),
    path("dead-letters.json", views.dead_letters_json, name="dead-letters-json"),
    path("dead-letters/requeue", views.requeue_matching, name="dead-letters-requeue"),
    path("dead-letters/purge", views.purge_matching, name="dead-letters-purge"),
    path("dead-letters/<str:letter_id>/requeue", views.requeue_one, name="dead-letter-requeue"),
    path("metrics", metrics_view, name="metrics"),
]
