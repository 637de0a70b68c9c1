"""The sample application's URLs: a signup that sends a welcome mail, and Django's password reset."""

from django.urls import include, path

from . import views

urlpatterns = [
    path("signup/", views.signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
]
