"""A recording HTTP(S) server, for the tests of the in-pod programs' own HTTP clients (the node provider's calls to
the API server, the Serve keeper's to the dashboard and to the proxies): it answers each request from a table and
keeps every exchange."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class RecordingServer:
    """Serves on `address` (port 0: any free one), over TLS when given a `context`. A request is answered from
    `answers` by its method and path, else with `default`; each answer is held up to `delay` seconds, until
    `released` is set (as the server closes)."""

    def __init__(
        self,
        address: tuple[str, int] = ("127.0.0.1", 0),
        context: ssl.SSLContext | None = None,
        default: tuple[int, Any] = (404, {"kind": "Status", "code": 404}),
    ) -> None:
        self.exchanges: list[Exchange] = []
        self.answers: dict[tuple[str, str], tuple[int, Any]] = {}
        self.default = default
        self.delay = 0.0
        self.released = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.exchanges.append(Exchange(self.command, self.path, dict(self.headers), body))
                server.released.wait(server.delay)
                code, answer = server.answers.get((self.command, self.path), server.default)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _answer  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(address, Handler)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port: int = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
