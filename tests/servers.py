"""Real servers the tests deliver to: an aiosmtpd SMTP server and a Postmark-speaking HTTP API."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any
    #: When the server accepted it (time.time()).
    received_at: float = 0.0

    @property
    def parsed(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


class RecordingSMTPHandler:
    """Accepts mail and records it; ``replies`` can script failures (e.g. "451 later")."""

    def __init__(self) -> None:
        self.received: list[ReceivedMail] = []
        self.replies: deque[str] = deque()
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.sessions = 0
        self.stall_seconds = 0.0
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        with self.lock:
            self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.stall_seconds:
            await asyncio.sleep(self.stall_seconds)
        with self.lock:
            if self.replies:
                return self.replies.popleft()
            self.received.append(
                ReceivedMail(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    session.peer,
                    received_at=time.time(),
                )
            )
        return "250 Message accepted"


class PoliteSMTP(SMTP):
    """Says "421" before closing an idle session, as Postfix and Exim do."""

    def _timeout_cb(self) -> None:
        self.transport.write(b"421 4.4.2 Error: timeout exceeded\r\n")
        self.transport.close()


class PoliteController(Controller):
    def factory(self) -> SMTP:
        return PoliteSMTP(self.handler, **self.SMTP_kwargs)


class SMTPServer:
    """A real SMTP server on a free loopback port."""

    def __init__(self, idle_timeout: float = 300, polite_idle_close: bool = False) -> None:
        self.handler = RecordingSMTPHandler()
        self.port = free_port()
        self.idle_timeout = idle_timeout
        self.controller_class = PoliteController if polite_idle_close else Controller
        self.controller = self._controller()

    def _controller(self) -> Controller:
        return self.controller_class(self.handler, hostname="127.0.0.1", port=self.port, timeout=self.idle_timeout)

    @property
    def received(self) -> list[ReceivedMail]:
        return self.handler.received

    def start(self) -> SMTPServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def restart(self) -> None:
        """Listen again on the same port (after ``stop``), keeping what was received."""
        self.controller = self._controller()
        self.controller.start()

    def mailer(self, backend: str = "workers.smtp.EmailBackend") -> dict[str, Any]:
        """A MAILERS entry for this server: mailqueue's SMTP backend, as the docs recommend, unless told."""
        return {"BACKEND": backend, "OPTIONS": {"host": "127.0.0.1", "port": self.port, "timeout": 5}}

    def wait_for(self, count: int, timeout: float = 15.0) -> list[ReceivedMail]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    connection: tuple[str, int]


@dataclass
class PostmarkAPI:
    """A local HTTP server that answers like Postmark's /email API and records requests.

    ``responses`` scripts the next replies as (status, json body); when empty it accepts.
    """

    requests: list[RecordedRequest] = field(default_factory=list)
    responses: deque[tuple[int, Any]] = field(default_factory=deque)
    connections: set[tuple[str, int]] = field(default_factory=set)

    def start(self) -> PostmarkAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real API

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                api.connections.add(self.client_address)
                api.requests.append(RecordedRequest(self.path, dict(self.headers), body, self.client_address))
                if api.responses:
                    status, reply = api.responses.popleft()
                elif isinstance(body, dict) and "Messages" in body:
                    # A batch send (/email/batch, /email/batchWithTemplates): one answer per message, as Postmark does.
                    status = 200
                    reply = [
                        {"ErrorCode": 0, "Message": "OK", "MessageID": f"pm-{len(api.requests)}-{n}", "To": one["To"]}
                        for n, one in enumerate(body["Messages"], start=1)
                    ]
                else:
                    status = 200
                    reply = {
                        "ErrorCode": 0,
                        "Message": "OK",
                        "MessageID": f"pm-{len(api.requests)}",
                        "To": body.get("To", ""),
                    }
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        # shutdown() waits for the serving loop to look up: every 0.5 s by default, a pause per test.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def mailer(self) -> dict[str, Any]:
        return {
            "BACKEND": "anymail.backends.postmark.EmailBackend",
            "OPTIONS": {"api_url": self.url, "server_token": "test-token"},
        }

    def wait_for(self, count: int, timeout: float = 15.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.requests


# aiosmtpd logs every session at INFO; quiet it.
SMTP.__init__.__globals__["log"].setLevel("WARNING")
