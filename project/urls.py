"""Demo URLs: the demo page, Django's own password-reset flow, the admin and mailqueue's dashboard."""

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("send/newsletter/", views.send_newsletter, name="send-newsletter"),
    path("send/notification/", views.send_notification, name="send-notification"),
    path("status.json", views.status_json, name="status-json"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("mailqueue/", include("mailqueue.urls")),
]
