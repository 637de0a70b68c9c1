"""The dashboard in a real browser: headless Debian chromium through selenium, against pytest-django's live server.

Real Redis (this test's namespace), a real worker and a real SMTP server make the figures; the page's own script
polls them. Skipped when chromium or chromedriver is missing, unless the CI variable is set (then it fails).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.mail import EmailMessage, send_mass_mail
from django.test import Client
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from mailqueue import deadletters
from mailqueue.deadletters import DeadLetter
from mailqueue.envelope import Envelope
from tests.servers import SMTPServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "a-password-for-the-browser"
#: Where the populated dashboard's screenshot is copied when set (docs/dashboard.png is taken this way).
SCREENSHOT_ENV = "MAILQUEUE_DASHBOARD_SCREENSHOT"
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">Reset your password"


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the browser tests cannot run: {missing}")
        pytest.skip(f"browser tests need Debian's chromium and chromedriver: {missing}")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: webdriver.Chrome, live_server: Any) -> webdriver.Chrome:
    """The browser with no session (each test logs in as whom it needs)."""
    browser.get(live_server.url + "/admin/login/")
    browser.delete_all_cookies()
    return browser


def wait_for(driver: webdriver.Chrome, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Wait until ``check()`` is truthy; a redrawn table between finding a cell and reading it is retried."""

    def attempt(_: Any) -> Any:
        try:
            return check()
        except (NoSuchElementException, StaleElementReferenceException):
            return None

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(attempt)


def cell(driver: webdriver.Chrome, table: str, key: str, column: int) -> str:
    """The text of the ``column``-th data cell of the row whose header cell reads ``key``."""
    return str(driver.find_element(By.XPATH, f"//table[@id='{table}']//tr[th='{key}']/td[{column}]").text)


READY, DEAD = 2, 5  # columns of the queues table (after "pool")


def log_in_through_the_admin(driver: webdriver.Chrome, live_server: Any, username: str) -> None:
    driver.get(live_server.url + "/mailqueue/")
    assert "/admin/login/?next=/mailqueue/" in driver.current_url
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(driver, lambda: driver.current_url == live_server.url + "/mailqueue/")


def record_letter(subject: str, *, queue: str, error: str, provider: str | None = "smtp", age: float = 60) -> None:
    envelope = Envelope.from_message(EmailMessage(subject, "b", None, ["x@example.com"]), queue=queue, mailer="x")
    deadletters.record(
        DeadLetter(
            id=envelope.id,
            queue=queue,
            reason=f"{error}: {subject}",
            error_type=error,
            failed_at=time.time() - age,
            attempts=3,
            payload=envelope.encode(),
            provider=provider,
        )
    )


@pytest.mark.django_db(transaction=True)
def test_anonymous_and_non_staff_visitors_get_no_data(page, live_server, smtp_setup, django_user_model) -> None:
    record_letter("secret subject", queue="default", error="X")
    for url in ("/mailqueue/dashboard.json", "/mailqueue/dead-letters.json"):
        page.get(live_server.url + url)
        assert '"error"' in page.page_source and "secret subject" not in page.page_source
    page.get(live_server.url + "/mailqueue/")
    assert "/admin/login/" in page.current_url

    visitor = django_user_model.objects.create_user("visitor", "v@example.com", PASSWORD)
    client = Client()
    client.force_login(visitor)  # the admin's login form refuses non-staff: bring a session of the ordinary kind
    page.add_cookie({"name": "sessionid", "value": client.cookies["sessionid"].value, "path": "/"})
    page.get(live_server.url + "/mailqueue/")
    assert "You may not see the mail queue" in page.page_source and "secret subject" not in page.page_source
    page.get(live_server.url + "/mailqueue/dead-letters.json")
    assert "You may not see the mail queue" in page.page_source and "secret subject" not in page.page_source


@pytest.mark.django_db(transaction=True)
def test_staff_watch_a_queue_fill_then_requeue_the_filtered_dead_letters(
    page, live_server, configure, smtp_server, django_user_model, run_worker, settings
) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, ON_COMMIT=False, MONITOR={"REFRESH": 0.5})
    django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    log_in_through_the_admin(page, live_server, "boss")
    wait_for(page, lambda: "live" in page.find_element(By.ID, "status").get_attribute("class"))
    assert cell(page, "queues", "default", READY) == "0"
    page.execute_script("window.notReloaded = true;")

    send_mass_mail([(f"hello {number}", "b", None, ["ann@example.com"]) for number in range(3)])
    wait_for(page, lambda: cell(page, "queues", "default", READY) == "3")

    # Three real dead letters in default (one with a hostile subject), two recorded ones in bulk of another class.
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 no such user"
    for subject in ("first", "second", HOSTILE):
        EmailMessage(subject, "b", None, ["gone@example.com"]).send()
    with run_worker() as worker:
        worker.drain()
    record_letter("bulk one", queue="bulk", error="AllProvidersFailed")
    record_letter("bulk two", queue="bulk", error="AllProvidersFailed")
    wait_for(page, lambda: cell(page, "queues", "default", DEAD) == "3" and cell(page, "queues", "bulk", DEAD) == "2")
    wait_for(page, lambda: page.find_element(By.ID, "dead-summary").text.startswith("5 dead letters match"))
    shown = page.find_element(By.ID, "dead-letters").text
    assert HOSTILE in shown  # shown as text, not made into an element
    assert page.title != "pwned" and not page.find_elements(By.CSS_SELECTOR, "#dead-letters img")
    (error_type,) = {letter.error_type for letter in deadletters.iter_dead("default")}

    Select(page.find_element(By.NAME, "queue")).select_by_value("default")
    page.find_element(By.NAME, "error_type").send_keys(error_type)
    page.find_element(By.CSS_SELECTOR, "#dead-filter button[type=submit]").click()
    wait_for(page, lambda: page.find_element(By.ID, "dead-summary").text.startswith("3 dead letters match"))
    requeue = page.find_element(By.ID, "requeue-all")
    assert requeue.text == "Requeue all 3 matching…"
    requeue.click()
    alert = wait_for(page, lambda: page.switch_to.alert)
    assert "all 3 dead letters" in alert.text and "queue default" in alert.text
    alert.accept()
    wait_for(page, lambda: "Requeued 3 of 3" in page.find_element(By.ID, "dead-result").text)
    wait_for(page, lambda: cell(page, "queues", "default", DEAD) == "0")
    assert cell(page, "queues", "bulk", DEAD) == "2" and cell(page, "queues", "default", READY) == "3"
    assert sorted(letter.subject for letter in deadletters.iter_dead()) == ["bulk one", "bulk two"]

    # Redis goes away: the page says its figures are stale, and comes back live on its own.
    mailqueue_settings = settings.MAILQUEUE
    settings.MAILQUEUE = {**mailqueue_settings, "BROKER_URL": "redis://127.0.0.1:1/0"}
    wait_for(page, lambda: "stale" in page.find_element(By.ID, "status").get_attribute("class"))
    assert "Redis is unreachable" in page.find_element(By.ID, "status").text
    settings.MAILQUEUE = mailqueue_settings
    wait_for(page, lambda: "live" in page.find_element(By.ID, "status").get_attribute("class"))
    assert page.execute_script("return window.notReloaded === true;")


@pytest.mark.django_db(transaction=True)
def test_a_busy_cluster_reads_at_a_glance(
    page, live_server, configure, smtp_server, django_user_model, run_worker, tmp_path
) -> None:
    """Several queues with traffic, a provider whose circuit opened, limits and a quota, dead letters: as shown."""
    down = SMTPServer().start()
    down.stop()  # nothing listens there any more: every send to "postmark" fails at connect
    configure(
        providers={"postmark": down.mailer(), "smtp": smtp_server.mailer()},
        queues={
            "critical": {"providers": ["postmark", "smtp"], "max_retries": 2},
            "default": {"providers": ["smtp"], "max_retries": 2},
            "bulk": {"providers": ["smtp"], "max_retries": 1},
        },
        PROVIDERS={
            "postmark": {"attempts": 1, "wait_min": 0.01, "wait_max": 0.01, "failure_threshold": 1, "cooldown": 600},
            "smtp": {"rate_limit": "200/s", "max_concurrency": 32, "quota": "50000/d"},
        },
        POOLS={
            "urgent": {"queues": ["critical"], "processes": 2, "threads": 4},
            "standard": {"queues": ["default", "bulk"], "processes": 1, "threads": 8},
        },
        ON_COMMIT=False,
        MONITOR={"REFRESH": 0.5},
    )
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 mailbox unavailable"
    send_mass_mail([(f"Your receipt #{n}", "b", None, ["ann@example.com"]) for n in range(12)], using="transactional")
    send_mass_mail([(f"New comment #{n}", "b", None, ["bob@example.com"]) for n in range(30)])
    send_mass_mail([(f"Weekly digest #{n}", "b", None, ["reader@example.com"]) for n in range(60)], using="bulk")
    for subject in ("Invoice 1042", "Welcome aboard", "<b>Flash sale</b> ends tonight"):
        EmailMessage(subject, "b", None, ["gone@example.com"]).send()
    with run_worker(threads=4) as worker:
        worker.drain()
    # Mail still waiting, so the queues show a backlog and the workers they call for.
    send_mass_mail([(f"Weekly digest #{n}", "b", None, ["reader@example.com"]) for n in range(60, 1260)], using="bulk")
    send_mass_mail([(f"New comment #{n}", "b", None, ["bob@example.com"]) for n in range(30, 45)])
    record_letter("Spring sale", queue="bulk", error="AllProvidersFailed", age=7200)

    django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    log_in_through_the_admin(page, live_server, "boss")
    wait_for(page, lambda: cell(page, "queues", "bulk", READY) == "1,200")
    wait_for(page, lambda: page.find_element(By.ID, "dead-summary").text.startswith("4 dead letters match"))
    assert cell(page, "queues", "default", READY) == "15" and cell(page, "queues", "default", DEAD) == "3"
    assert cell(page, "queues", "critical", 1).splitlines() == ["urgent (2 × 4 threads)", "failover"]
    circuit = cell(page, "providers", "postmark", 1)
    assert circuit.startswith("open") and "probe in" in circuit
    assert cell(page, "providers", "smtp", 1).startswith("closed")
    assert "200/" in cell(page, "providers", "smtp", 5) and "of 50000/d" in cell(page, "providers", "smtp", 6)
    assert cell(page, "providers", "smtp", 4).endswith("/ 32")
    assert "<b>Flash sale</b> ends tonight" in page.find_element(By.ID, "dead-letters").text
    shot = tmp_path / "dashboard.png"
    # The whole page at 1280 px wide, as one image: the viewport made as tall as the page.
    metrics = {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        # Nothing sticks out: not the page past 1280 px, nor a table past its panel.
        assert page.execute_script("return document.documentElement.scrollWidth;") <= 1280
        overflowing = "return [...document.querySelectorAll('table')].filter(t => t.offsetWidth > t.parentNode.clientWidth).map(t => t.id);"
        assert page.execute_script(overflowing) == []
        height = page.execute_script("return document.documentElement.scrollHeight;")
        page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": height})
        page.save_screenshot(str(shot))
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, Path(os.environ[SCREENSHOT_ENV]))


#: Holds the page's POSTs for a moment (in the browser: the server is not touched), so a second click can land.
SLOW_POSTS = """
const realFetch = window.fetch;
window.fetch = (url, init) => (init && init.method === "POST")
  ? new Promise((resolve) => setTimeout(resolve, 1500)).then(() => realFetch(url, init))
  : realFetch(url, init);
"""


@pytest.mark.django_db(transaction=True)
def test_a_double_click_on_requeue_all_requeues_once(page, live_server, smtp_setup, django_user_model) -> None:
    for number in range(4):
        record_letter(f"dead {number}", queue="default", error="X")
    record_letter("late", queue="bulk", error="X", age=1)
    django_user_model.objects.create_superuser("boss", "boss@example.com", PASSWORD)
    log_in_through_the_admin(page, live_server, "boss")
    Select(page.find_element(By.NAME, "queue")).select_by_value("default")
    page.find_element(By.CSS_SELECTOR, "#dead-filter button[type=submit]").click()
    wait_for(page, lambda: page.find_element(By.ID, "dead-summary").text.startswith("4 dead letters match"))
    page.execute_script(SLOW_POSTS)
    requeue, purge = page.find_element(By.ID, "requeue-all"), page.find_element(By.ID, "purge-all")
    requeue.click()
    wait_for(page, lambda: page.switch_to.alert).accept()
    assert requeue.get_attribute("disabled") and purge.get_attribute("disabled")  # while the POST is in flight
    page.execute_script("arguments[0].click();", requeue)  # a second click: no dialog, no second POST
    wait_for(page, lambda: "Requeued 4 of 4" in page.find_element(By.ID, "dead-result").text)
    assert [letter.subject for letter in deadletters.iter_dead()] == ["late"]
    assert page.find_element(By.ID, "dead-summary").text.startswith("0 dead letters match")
    assert (
        page.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter(e => e.name.endsWith('/dead-letters/requeue')).length;"
        )
        == 1
    )
