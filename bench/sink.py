"""``python -m bench.sink``: the counting SMTP sink and Postmark-speaking HTTP endpoint every drain runs against.

One process, one asyncio loop: an aiosmtpd server and a minimal keep-alive HTTP server. Each message is
counted by its Message-ID, so the harness can check that a drain delivered exactly N distinct messages
(no loss, no duplicates), and the times of the first and last arrival give the drain rate without the
workers' start-up. ``GET /_stats``, ``GET /_arrivals`` (when each Message-ID arrived) and ``POST /_reset`` on
the HTTP port are the harness's controls.
It runs in a process of its own so that its CPU time never shares a GIL with the senders'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from collections import Counter
from typing import Any

from aiosmtpd.smtp import SMTP

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


class Tally:
    """Messages received since the last reset, by Message-ID."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ids: Counter[str] = Counter()
        self.received = 0
        self.without_id = 0
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0
        #: When each Message-ID first arrived (time.monotonic(), the same clock in every process): the idle bench.
        self.arrivals: dict[str, float] = {}

    def add(self, message_id: str | None, size: int) -> None:
        now = time.monotonic()
        if not self.received:
            self.first = now
        self.last = now
        self.received += 1
        self.bytes += size
        if message_id is None:
            self.without_id += 1
        else:
            self.ids[message_id] += 1
            self.arrivals.setdefault(message_id, now)

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "unique": len(self.ids),
            "duplicates": sum(count - 1 for count in self.ids.values() if count > 1),
            "without_id": self.without_id,
            "bytes": self.bytes,
            "first": self.first,
            "last": self.last,
        }


class CountingHandler:
    """aiosmtpd handler: accept every message and count it."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's hook name)
        data = envelope.original_content or b""
        header_end = data.find(b"\r\n\r\n")
        match = MESSAGE_ID.search(data, 0, header_end if header_end >= 0 else len(data))
        self.tally.add(match.group(1).decode("ascii", "replace") if match else None, len(data))
        return "250 Message accepted"


def _postmark_message_id(body: dict[str, Any]) -> str | None:
    for header in body.get("Headers") or ():
        if header.get("Name", "").lower() == "message-id":
            return str(header.get("Value"))
    return None


def _response(status: int, reply: Any) -> bytes:
    data = json.dumps(reply).encode()
    reason = "OK" if status == 200 else "Not Found"
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


async def _serve_http(tally: Tally, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive HTTP/1.1 loop: Postmark's /email and /email/batch, and the controls."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            if path.startswith("/_stats"):
                writer.write(_response(200, tally.stats()))
            elif path.startswith("/_arrivals"):
                writer.write(_response(200, tally.arrivals))
            elif path.startswith("/_reset") and method == "POST":
                tally.reset()
                writer.write(_response(200, {"reset": True}))
            elif path.rstrip("/").endswith("/email/batch"):
                replies = []
                for body in json.loads(raw):
                    tally.add(_postmark_message_id(body), len(json.dumps(body)))
                    replies.append({"ErrorCode": 0, "Message": "OK", "MessageID": "pm", "To": body.get("To", "")})
                writer.write(_response(200, replies))
            elif path.rstrip("/").endswith("/email"):
                body = json.loads(raw)
                tally.add(_postmark_message_id(body), length)
                reply = {"ErrorCode": 0, "Message": "OK", "MessageID": f"pm-{tally.received}", "To": body.get("To", "")}
                writer.write(_response(200, reply))
            else:
                writer.write(_response(404, {"ErrorCode": 404, "Message": f"no {path}"}))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(smtp_port: int, http_port: int) -> None:
    tally = Tally()
    loop = asyncio.get_running_loop()
    handler = CountingHandler(tally)
    smtp = await loop.create_server(
        lambda: SMTP(handler, hostname="127.0.0.1", data_size_limit=None, timeout=600),
        host="127.0.0.1",
        port=smtp_port,
    )
    http = await asyncio.start_server(lambda r, w: _serve_http(tally, r, w), host="127.0.0.1", port=http_port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)  # noqa: T201  (the harness waits for this line)
    await stop.wait()
    smtp.close()
    http.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    args = parser.parse_args()
    # aiosmtpd logs every session at INFO.
    SMTP.__init__.__globals__["log"].setLevel("WARNING")
    asyncio.run(serve(args.smtp_port, args.http_port))


if __name__ == "__main__":
    main()
