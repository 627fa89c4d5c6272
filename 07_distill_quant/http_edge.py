"""The HTTP edge of serve.py: an http.server that no client can hold, confuse or drive from a web page.

    class Handler(GuardedHandler):              # serve.py
        routes = {"/v1/models": {"GET": "models"}, ...}   # path -> {method: handler method name}
        keyed = ("/v1/",)                        # paths that need --api-key when one is set
    server = GuardedServer(("127.0.0.1", 8000), Handler, timeout=10, max_connections=128)

Python's http.server is a fine teacher but a trusting server. What it does by default, and what
this module changes:
- it reads a request with no deadline: a client that sends half its headers, or a Content-Length
  larger than its body, holds a thread and a socket for ever, and a few hundred of them exhaust the
  file descriptors. Here the request line and headers must arrive within `timeout` seconds, the body
  within `timeout` more (a deadline over the whole read, `DeadlineReader`: a per-recv timeout would
  let a client sending a byte a second stay for ever), and every write of the answer must be taken
  within `timeout`; past `max_connections` a new connection gets 503 + Retry-After at once;
- it takes `GET /` as HTTP/0.9 and waits for headers that never come, and answers malformed request
  lines without a status line: here both get a 400 with one;
- it answers a method it has no do_<METHOD> for with 501: here 405 with `Allow` (RFC 9110);
- it executes whatever a browser sends: a page on any site may POST text/plain to 127.0.0.1 (a
  "simple" request needs no CORS preflight), and through DNS rebinding read the answers. Here a
  request whose Origin is not the server's own page (or one `cors_origins` allows) gets 403, and
  without an API key so does a Host header that is not an IP address, localhost or the bound name.
Errors are OpenAI-shaped JSON (openai_api.APIError) like the rest of the API.

Interview questions it answers:
- What is slowloris, and why is a socket timeout not enough? (many connections sending a byte now and
  then; a timeout per recv never fires, a deadline over the whole request does)
- What is DNS rebinding? (evil.example's DNS answer changes to 127.0.0.1 after the page loads: the
  browser now sends the page's requests to your server as same-origin; only Host still says evil)
- Why does a cross-origin text/plain POST need no preflight? (it is a "simple request" an HTML form
  could send; CORS only stops the page reading the answer, not the server acting on it)
"""

import hmac
import io
import ipaddress
import json
import select
import socket
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openai_api import APIError  # this stage
from serve_metrics import Metrics  # this stage

# ----------------------------------------------------------------------------- who may call


def host_name(host_header) -> str:
    """'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.partition(":")[0]


def host_allowed(host_header, bound_host) -> bool:
    """Whether a Host header names this machine directly: an IP address, localhost or --host. A DNS
    name is refused, because a rebinding attack's page reaches 127.0.0.1 under its own name."""
    if not host_header:  # HTTP/1.0 clients may send none; browsers always send one
        return True
    name = host_name(host_header).lower().rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in ("localhost", bound_host.lower())


def origin_allowed(origin, host_header, cors_origins) -> bool:
    """Whether a browser page from `origin` may call: the server's own page, or one --cors-origin
    names. No Origin header: not a cross-site browser request (curl, SDKs, same-origin GETs)."""
    if origin is None:
        return True
    return origin == f"http://{host_header}" or origin in cors_origins or "*" in cors_origins


# ----------------------------------------------------------------------------- the server


class GuardedServer(ThreadingHTTPServer):
    """One thread per connection (daemon threads: Ctrl-C does not wait for slow clients), at most
    max_connections of them; the settings the handlers check against live here."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog; socketserver's 5 reset connections of a 20-client burst

    def __init__(
        self,
        address,
        handler,
        api_key="",
        max_body=256 * 1024,
        log_requests=True,
        timeout=10.0,
        max_connections=128,
        cors_origins=(),
    ):
        super().__init__(address, handler)
        self.api_key, self.max_body, self.log_requests = api_key, max_body, log_requests
        self.timeout_s, self.max_connections = timeout, max_connections
        self.cors_origins = tuple(cors_origins)
        self.host = address[0]
        self.metrics = Metrics()
        self.open_connections, self.refusing, self.lock = 0, 0, threading.Lock()

    def process_request(self, request, client_address):
        """A thread for the connection, or, past the cap, a short one that answers 503 and closes."""
        with self.lock:
            full = self.open_connections >= self.max_connections
            self.open_connections += not full
        if full:
            with self.lock:  # the refusing threads are bounded too: past as many again, no courtesy read
                polite = self.refusing < self.max_connections
                self.refusing += polite
            if polite:
                threading.Thread(target=self.refuse, args=(request, True), daemon=True).start()
            else:
                self.refuse(request, False)
        else:
            super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.open_connections -= 1

    def refuse(self, sock, polite):
        """503 to a connection over the cap. Politely, its request head is read first (for at most a
        second): closing a socket with unread bytes sends a reset, and the client may not see the answer."""
        body = (
            b'{"error": {"message": "too many connections; retry shortly", "type": "server_error", '
            b'"param": null, "code": "server_overloaded"}}'
        )
        try:
            sock.settimeout(1.0 if polite else 0.0)
            seen = b""
            while b"\r\n\r\n" not in seen and len(seen) < 65536:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                seen += chunk
        except OSError:
            pass
        try:
            sock.sendall(
                b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        except OSError:
            pass
        self.metrics.count_response("(over the connection cap)", 503)
        self.shutdown_request(sock)
        if polite:
            with self.lock:
                self.refusing -= 1


class DeadlineReader(io.RawIOBase):
    """The connection's bytes, where no read may end after `handler.deadline` (time.monotonic()).
    A socket timeout alone bounds each recv, so a client sending one byte every few seconds would hold
    the connection for ever (slowloris); the deadline bounds the whole header, then the whole body."""

    def __init__(self, sock, handler):
        super().__init__()
        self.sock, self.handler = sock, handler

    def readable(self):
        return True

    def readinto(self, buf):
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client took too long to send its request")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class ClientGone(Exception):
    """The client closed its connection (or stopped reading); its requests have been cancelled."""


class GuardedHandler(BaseHTTPRequestHandler):
    """One connection: the protocol's edges (deadlines, malformed lines, methods), who may call, then
    the method `routes` names. One request per connection (HTTP/1.0): a slow client holds one thread."""

    routes: dict = {}  # path -> {method: name of the method that answers it}
    keyed: tuple = ()  # path prefixes that need the API key when the server has one
    server: "GuardedServer"
    server_version = "llm-from-scratch"
    cors_origin = None  # the Origin to echo in Access-Control-Allow-Origin, when --cors-origin allows it
    deadline = 0.0

    def route_of(self, path) -> str:
        """The `routes` key a path falls under ('' for none; a key ending in / matches by prefix): also
        the metrics' route label, so that a scan of random paths cannot grow the metrics without bound."""
        if path in self.routes:
            return path
        prefix = next((p for p in self.routes if p.endswith("/") and p != "/" and path.startswith(p)), "")
        return prefix if len(path) > len(prefix) else ""

    def version_string(self):
        return self.server_version

    # -------- the protocol

    def setup(self):
        super().setup()
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self))

    def handle_one_request(self):
        self.deadline = time.monotonic() + self.server.timeout_s  # for the request line and headers
        super().handle_one_request()  # a TimeoutError there closes the connection

    def parse_request(self):
        """http.server's parsing, after refusing what it mishandles: a request line of other than three
        words (it takes `GET /` as HTTP/0.9, waits for headers that never come, and answers without a
        status line) and garbage (answered without a status line too)."""
        line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = line.split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.command, self.path, self.requestline = None, "", line[:200]
            self.request_version = "HTTP/1.0"
            self.send_error(
                400, "the request line must be `METHOD /path HTTP/1.1` (HTTP/0.9 is not supported)"
            )
            return False
        return super().parse_request()

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors in the JSON shape, with a status line; 501 (it has no do_<METHOD>)
        becomes 405 with Allow, or 404."""
        self.close_connection = True
        if (
            getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9"
        ):  # http.server writes no status line for it
            self.request_version = "HTTP/1.0"
        if code == 501 and getattr(self, "command", None):
            return self.route()
        self.send_json(code, APIError(code, message or self.responses.get(code, ("error",))[0]).body())

    def send_response(self, code, message=None):
        route = self.route_of(getattr(self, "path", "").split("?")[0])
        self.server.metrics.count_response(route or "(other)", code)
        self.connection.settimeout(self.server.timeout_s)  # each write of the answer, from here on
        super().send_response(code, message)

    def end_headers(self):
        if self.cors_origin:
            self.send_header("Access-Control-Allow-Origin", self.cors_origin)
            self.send_header("Vary", "Origin")
        super().end_headers()

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def do_OPTIONS(self):  # a browser's CORS preflight
        self.route()

    # -------- routing and who may call

    def route(self):
        try:
            path = self.path.split("?", 1)[0]
            self.check_caller()
            methods = self.routes.get(self.route_of(path))
            if methods is None:
                known = ", ".join(
                    f"{m} {p}{'{id}' if p.endswith('/') else ''}" for p, ms in self.routes.items() for m in ms
                )
                raise APIError(
                    404, f"no route {self.command} {path}; this server has {known}", code="unknown_url"
                )
            allow = ", ".join(methods)
            if self.command == "OPTIONS":
                self.preflight(allow)
                return
            if self.command not in methods:
                raise APIError(
                    405,
                    f"{self.command} is not allowed on {path}; use {allow}",
                    code="method_not_allowed",
                    headers={"Allow": allow},
                )
            if path.startswith(self.keyed) and not self.has_key():
                raise APIError(
                    401,
                    "missing or wrong API key; send the header `Authorization: Bearer <key>`",
                    code="invalid_api_key",
                )
            getattr(self, methods[self.command])()
        except APIError as e:
            self.send_json(e.status, e.body(), e.headers)
        except (ClientGone, BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left (or stopped reading) before its answer was written
        except Exception as e:  # a bug: say so in the server's log, not to the client
            self.log_error("internal error: %r", e)
            traceback.print_exc()
            self.send_json(
                500, APIError(500, "internal server error; see the server's log", kind="server_error").body()
            )

    def check_caller(self):
        """403 for a page from another origin (unless --cors-origin allows it) and, without an API key,
        for a Host that does not name this machine directly (DNS rebinding)."""
        s, host, origin = self.server, self.headers.get("Host", ""), self.headers.get("Origin")
        if not s.api_key and not host_allowed(host, s.host):
            raise APIError(
                403,
                f"the Host header {host!r} does not name this machine (DNS-rebinding protection); "
                "connect by IP address or localhost, or start the server with --api-key",
                code="host_not_allowed",
            )
        if not origin_allowed(origin, host, s.cors_origins):
            raise APIError(
                403,
                f"requests from pages at {origin!r} are not allowed; start the server with --cors-origin {origin}",
                code="origin_not_allowed",
            )
        if origin is not None and origin != f"http://{host}":
            self.cors_origin = origin

    def preflight(self, allow):
        self.send_response(204)
        self.send_header("Allow", allow)
        if self.cors_origin:
            self.send_header("Access-Control-Allow-Methods", allow)
            self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
            self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def has_key(self) -> bool:
        key = self.server.api_key
        given = self.headers.get("Authorization", "")
        return not key or hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    # -------- reading and writing

    def read_body(self) -> bytes:
        """The request body: Content-Length bytes, at most server.max_body, within the deadline."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise APIError(
                411, "send the body with a Content-Length header (chunked bodies are not supported)"
            )
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise APIError(
                411, "the request needs a Content-Length header with the body's size in bytes"
            ) from None
        limit = self.server.max_body
        self.deadline = time.monotonic() + self.server.timeout_s
        try:
            if length > limit:
                self.discard(min(length, 16 * limit))  # read it, so the client sees our answer, not a reset
                raise APIError(
                    413, f"the body is {length} bytes; this server accepts at most {limit} (--max-body-kib)"
                )
            raw = self.rfile.read(max(length, 0))
        except TimeoutError:
            raise APIError(
                408, f"the body did not arrive within {self.server.timeout_s:g} s (Content-Length: {length})"
            ) from None
        if len(raw) < length:
            raise APIError(400, f"the body ended after {len(raw)} of its {length} bytes (Content-Length)")
        return raw

    def discard(self, n):
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 16))
            if not chunk:
                break
            n -= len(chunk)

    def send_json(self, status, obj, headers=None):
        self.send_bytes(
            status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json", headers
        )

    def send_bytes(self, status, data, content_type, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        if self.server.log_requests:
            super().log_message(format, *args)

    def client_gone(self) -> bool:
        """Whether the client closed the connection: its socket reads as end-of-file."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
