"""docs/getting-started.md, followed to the letter in a project made by ``django-admin startproject``.

The settings snippets are read from the page itself (each follows a ``<!-- startproject: ... -->`` marker), so
the page cannot drift from what works. The worker is a real ``python -m workers`` process, the Redis a private
redis-server, the SMTP server a real aiosmtpd; only "pip install" is stood in for by PYTHONPATH.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "getting-started.md").read_text()
README = (ROOT / "README.md").read_text()

#: The block startproject (Django 6.1) ends settings.py with, which the page says to replace.
GENERATED_MAILERS = re.compile(r"^MAILERS = \{\n.*?^\}\n", re.MULTILINE | re.DOTALL)


#: Run in the new project's shell: the dashboard's JSON as a staff user, and what an anonymous visitor gets.
DASHBOARD_AS_STAFF = """
from django.contrib.auth.models import User
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
User.objects.create_user("staff", password="pw", is_staff=True)
client = Client()
anonymous = client.get("/mailqueue/").status_code
client.login(username="staff", password="pw")
response = client.get("/mailqueue/dashboard.json")
queues = [queue["queue"] for queue in response.json()["queues"]]
print("dashboard", response.status_code, "queues", queues, "anonymous", anonymous)
"""


def snippet(marker: str) -> str:
    """The ```python block right after ``<!-- startproject: {marker} -->``."""
    found = re.search(rf"<!-- startproject: {re.escape(marker)} -->\n```python\n(.*?)```\n", PAGE, re.DOTALL)
    assert found, f"docs/getting-started.md lost its {marker!r} snippet"
    return found.group(1)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """The page's settings use mailqueue's default namespace: give them a Redis of their own."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()


def test_the_pages_settings_work_pasted_into_a_new_startproject(tmp_path, private_redis, smtp_server) -> None:
    for command in (
        "django-admin startproject mysite",
        "python manage.py migrate",
        "python manage.py check",
        "export DJANGO_SETTINGS_MODULE=mysite.settings",
        "python -m workers default",
        "python manage.py shell",
    ):
        assert command in PAGE, f"the page no longer says {command!r}: update this test with it"
    # The Redis and SMTP server of this test, through the variables the page names (with defaults that need
    # none); the project's settings module is its own, not the suite's.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SMTP_", "REDIS_", "POSTMARK_"))}
    env.update(PYTHONPATH=str(ROOT), REDIS_URL=private_redis.url, SMTP_PORT=str(smtp_server.port))

    def run(*args: str, cwd: Path, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, *args], cwd=cwd, env={**env, **(extra or {})}, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    run("-m", "django", "startproject", "mysite", cwd=tmp_path)  # what django-admin runs
    project = tmp_path / "mysite"
    settings_file = project / "mysite" / "settings.py"
    generated = settings_file.read_text()
    block = GENERATED_MAILERS.search(generated)
    assert block, "startproject no longer ends settings.py with a MAILERS block: update the page's step 2"
    assert block.group(0) in PAGE  # the page shows the very block to replace
    smallest = snippet("replaces the generated MAILERS block")
    settings_file.write_text(generated[: block.start()] + smallest + generated[block.end() :])

    # The worker starts while check and migrate run (it needs neither): the test takes a few seconds less.
    worker = subprocess.Popen(
        [sys.executable, "-m", "workers", "default"],
        cwd=project,
        env={**env, "DJANGO_SETTINGS_MODULE": "mysite.settings"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert "System check identified no issues" in run("manage.py", "check", cwd=project).stdout
        run("manage.py", "migrate", cwd=project)
        run("manage.py", "shell", "-c", snippet("run in manage.py shell"), cwd=project)
        received = smtp_server.wait_for(1, timeout=60)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            log = worker.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            log = worker.communicate()[0].decode(errors="replace")
    assert len(received) == 1, log
    assert received[0].rcpt_tos == ["you@example.com"]
    assert received[0].parsed["Subject"] == "It works"
    assert received[0].parsed.get_content().rstrip() == "Delivered by a mailqueue worker."

    # Step 9: the dashboard's URLs added to the generated urls.py; a staff user sees the queues.
    urls_file = project / "mysite" / "urls.py"
    urls_file.write_text(urls_file.read_text() + "\n" + snippet("added to the end of mysite/urls.py"))
    seen = run("manage.py", "shell", "-c", DASHBOARD_AS_STAFF, cwd=project).stdout
    assert "dashboard 200 queues ['default'] anonymous 302" in seen, seen

    # Step 4: MAILERS and MAILQUEUE of the smallest setup (the end of the file) replaced by the production ones.
    current = settings_file.read_text()
    start = current.index("MAILERS = {", current.index(smallest))
    settings_file.write_text(current[:start] + snippet("replaces MAILERS and MAILQUEUE of the smallest setup"))
    needed = {"POSTMARK_SERVER_TOKEN": "server-token", "SMTP_USER": "mailer", "SMTP_PASSWORD": "pw"}
    assert "System check identified no issues" in run("manage.py", "check", cwd=project, extra=needed).stdout


def test_the_readme_quick_start_is_the_pages_smallest_setup() -> None:
    readme = re.search(r"## Quick start in your own project\n.*?```python\n(.*?)```\n", README, re.DOTALL)
    assert readme, "README.md lost its quick-start settings block"
    assert readme.group(1) == snippet("replaces the generated MAILERS block")
