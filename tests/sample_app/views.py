"""The sample application's one view of its own: sign up, get a welcome mail."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_POST


@require_POST
def signup(request: HttpRequest) -> HttpResponse:
    email = request.POST["email"]
    get_user_model().objects.create_user(username=email, email=email, password=request.POST.get("password", "pw"))
    send_mail("Welcome to Sample", f"Hello {email}, welcome aboard.", None, [email], using="transactional")
    return HttpResponse(status=201)
