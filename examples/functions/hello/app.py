"""hello: a minimal SCF-style image function, Python 3.11 standard library only.

An image function is an HTTP server listening on 0.0.0.0:9000 (here `$PORT` when
set, as the gateway passes the port it picked, else 9000). The gateway (or the
SCF platform) sends it:

* event invocations as ``POST /event-invoke`` with the event as the body; this
  function answers::

      {"message": "Hello, <name>!", "event": <event>, "path": "/event-invoke",
       "headers": {<the X-Scf-* headers, lower-cased>}}

  where ``<event>`` is the parsed JSON event (or the raw text when the body is
  not JSON) and ``<name>`` is the event's ``"name"`` key when the event is a
  JSON object that has one, else ``world``;

* web-function requests as they were sent (any method, any path); this
  function answers::

      {"message": "Hello, <name>!", "method": "<method>", "path": "<path?query>",
       "body": "<request body as text>",
       "headers": {<the X-Scf-* and X-Forwarded-* headers, lower-cased>}}

  where ``<name>`` comes from a ``name`` query parameter, else from a JSON
  object body's ``"name"`` key, else ``world``.

Every request also carries the X-Scf-* context headers (X-Scf-Request-Id,
X-Scf-Memory, X-Scf-Timeout, X-Scf-Name, ...). Connections are HTTP/1.1 with
keep-alive: every answer has a Content-Length and leaves in one write (see
``Handler.wbufsize``), and request bodies are read by Content-Length or as
``Transfer-Encoding: chunked``. Each request prints one line to stdout (which
the gateway attributes to the invocation). SIGTERM and SIGINT stop the server
cleanly: it stops accepting, lets requests in progress finish (for a few
seconds at most) and exits with status 0.

Run it: ``PORT=9000 python3 app.py``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

EVENT_PATH = "/event-invoke"
# How long a shutdown waits for requests in progress before exiting anyway.
SHUTDOWN_GRACE_SECONDS = 5.0
# Refuse request bodies larger than this (bytes); SCF caps events at a few MB.
MAX_BODY_BYTES = 64 * 1024 * 1024

_print_lock = threading.Lock()


def log(line: str) -> None:
    """Print one whole line to stdout; the lock keeps threads from interleaving."""
    with _print_lock:
        print(line, flush=True)


class BadRequest(Exception):
    """The request is malformed; answer 400 and close the connection."""


class InFlight:
    """Counts requests in progress so a shutdown can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def __enter__(self) -> "InFlight":
        with self._cond:
            self._count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)


IN_FLIGHT = InFlight()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer sends Content-Length
    server_version = "scf-hello/1.0"
    # Answer in one write: with a buffered writer the head and the body leave together
    # when the request is done. http.server's default (unbuffered) sends the head
    # alone, and Nagle's algorithm then holds the body until the head is acknowledged,
    # which a client that delays its ACKs does about 40 ms later, on every request.
    wbufsize = -1
    # An answer larger than the buffer still leaves in more than one write: never let
    # it wait for an acknowledgement either.
    disable_nagle_algorithm = True

    def version_string(self) -> str:
        return self.server_version

    # BaseHTTPRequestHandler dispatches to do_<METHOD>: send every method to one place.
    def __getattr__(self, name: str):
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Silence the default stderr access log; `_handle` prints its own line."""

    def handle_expect_100(self) -> bool:
        """`100 Continue` must leave now, not with the answer: the client waits for it."""
        go_on = super().handle_expect_100()
        self.wfile.flush()
        return go_on

    # -- request body -------------------------------------------------------

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if te:
            if te.strip().lower() != "chunked":
                raise BadRequest(f"unsupported Transfer-Encoding: {te}")
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length.strip())
        except ValueError:
            raise BadRequest(f"bad Content-Length: {length!r}") from None
        if n < 0 or n > MAX_BODY_BYTES:
            raise BadRequest(f"bad Content-Length: {n}")
        data = self.rfile.read(n)
        if len(data) != n:
            raise BadRequest("body shorter than Content-Length")
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise BadRequest("bad chunk size line")
            size_text = line.split(b";", 1)[0].strip()  # drop chunk extensions
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadRequest(f"bad chunk size: {size_text!r}") from None
            if size < 0:
                raise BadRequest("negative chunk size")
            if size == 0:
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise BadRequest("chunked body too large")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(1024) not in (b"\r\n", b"\n"):
                raise BadRequest("truncated chunk")
            parts.append(chunk)
        # Trailer section: header lines up to an empty line (ignored).
        while True:
            line = self.rfile.readline(8192)
            if not line:
                raise BadRequest("truncated trailers")
            if line in (b"\r\n", b"\n"):
                break
        return b"".join(parts)

    # -- answers ------------------------------------------------------------

    def _headers_with(self, *prefixes: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.headers.items():
            k = key.lower()
            if k.startswith(prefixes):
                out[k] = f"{out[k]}, {value}" if k in out else value
        return out

    def _send_json(self, status: int, obj: object, close: bool = False) -> int:
        payload = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return 0
        self.wfile.write(payload)
        return len(payload)

    def _handle(self) -> None:
        with IN_FLIGHT:
            started = time.monotonic()
            request_id = self.headers.get("X-Scf-Request-Id", "-")
            try:
                body = self._read_body()
            except BadRequest as e:
                sent = self._send_json(400, {"error": str(e)}, close=True)
                self._log_line(400, request_id, 0, sent, started)
                return

            text = body.decode("utf-8", errors="replace")
            try:
                event: object = json.loads(text)
            except ValueError:
                event = text  # not JSON: the raw text
            body_name = event.get("name") if isinstance(event, dict) else None

            url = urlsplit(self.path)
            if self.command == "POST" and url.path == EVENT_PATH:
                name = body_name
                answer = {
                    "message": None,
                    "event": event,
                    "path": EVENT_PATH,
                    "headers": self._headers_with("x-scf-"),
                }
            else:
                names = parse_qs(url.query).get("name")
                name = names[0] if names else body_name
                answer = {
                    "message": None,
                    "method": self.command,
                    "path": self.path,
                    "body": text,
                    "headers": self._headers_with("x-scf-", "x-forwarded-"),
                }
            answer["message"] = f"Hello, {'world' if name in (None, '') else name}!"

            # Printed while handling, before the answer, as function code does: the
            # gateway attributes lines written during an invocation to its request id.
            payload_size = len(json.dumps(answer, ensure_ascii=False).encode("utf-8"))
            self._log_line(200, request_id, len(body), payload_size, started)
            self._send_json(200, answer)

    def _log_line(
        self, status: int, request_id: str, bytes_in: int, bytes_out: int, started: float
    ) -> None:
        ms = (time.monotonic() - started) * 1000
        log(
            f"hello: {self.command} {self.path} -> {status} request_id={request_id} "
            f"in={bytes_in}B out={bytes_out}B {ms:.1f}ms"
        )

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block exit
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main() -> int:
    port = int(os.environ.get("PORT") or 9000)
    server = Server(("0.0.0.0", port), Handler)

    def on_signal(signum: int, _frame: object) -> None:
        log(f"hello: received {signal.Signals(signum).name}, shutting down")
        # shutdown() blocks until serve_forever() returns, and serve_forever()
        # runs on this (the main) thread: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log(f"hello: listening on 0.0.0.0:{port}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()  # stop accepting
        if not IN_FLIGHT.wait_idle(SHUTDOWN_GRACE_SECONDS):
            log("hello: requests still in progress after grace period; exiting")
    log("hello: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
