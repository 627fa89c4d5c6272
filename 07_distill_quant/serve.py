"""An OpenAI-compatible HTTP server for any checkpoint of this repository, standard library only.

    python 07_distill_quant/serve.py --ckpt runs/tiny/sft/adapter.pt --port 8000
    open http://127.0.0.1:8000/                    # a small chat page, streaming
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Where does Noin Marora live?"}], "temperature": 0}'
    curl http://127.0.0.1:8000/metrics             # Prometheus text format (serve_metrics.py)

Endpoints: POST /v1/chat/completions (messages rendered with 05's chat template; "stream": true sends
server-sent events, `data: {chunk}` lines ending with `data: [DONE]`), POST /v1/completions (plain
continuation of a prompt), GET /v1/models and /v1/models/{id}, GET /health, GET /metrics, GET / (the
chat page, chat_page.html). Responses carry usage token counts. Understood fields: model, messages /
prompt, max_tokens (or max_completion_tokens), temperature, top_p, stop, seed, n (up to 8 answers,
decoded together), stream, stream_options.include_usage, presence_penalty, frequency_penalty,
logit_bias, logprobs (and top_logprobs), and two extensions, top_k and repetition_penalty. Any other
field gets a 400 naming it (openai_api.py): nothing is silently ignored.

Checkpoints: 04's pretrain/best.pt or ckpt.pt, 05's sft/adapter.pt (LoRA, the default of sft.py,
prefix tuning or bottleneck adapters, loaded onto their base by 05's load_finetuned) or sft/ckpt.pt
(--method full), any file in 03's checkpoint format holding a GPT. The tokenizer is the one the
checkpoint names (stored relative to the checkpoint's folder), or --tokenizer.

How it is built: one ThreadingHTTPServer thread per connection reads and checks the request
(openai_api.py), then hands batching.Requests to the one Engine thread (batching.py), which owns the
model and decodes every running request together; the handler thread streams the text as it appears.
A failure while sampling one request ends that request alone; a bug in the shared forward pass ends
the running ones with 500, and the server goes on.

What a client cannot do to it (each has a test in tests/test_07_serve.py):
- hold a thread forever: the request line and headers must arrive within --timeout seconds, the body
  within --timeout more, and each write of the answer must be accepted within --timeout (a client
  that stops reading its stream is cancelled); past --max-connections open connections, a new one gets
  503 + Retry-After at once (a thread that only reads its request and answers);
- break other requests: settings are range-checked before any compute and the sampler maps the
  float32 limits (batching.MIN_TEMPERATURE); a bad body is a 400, a full queue a 503;
- drive it from a web page: a request whose Origin is not the server's own page (or one allowed by
  --cors-origin) gets 403, and without --api-key so does a Host header that is neither an IP address
  nor localhost (DNS rebinding: evil.example resolved to 127.0.0.1 is still evil.example);
- read anything without the key: with --api-key, /v1 and /metrics need it, /health says only "ok".
It binds 127.0.0.1 and has no TLS: put it behind a reverse proxy before exposing it beyond your machine.

Interview questions it answers:
- What is server-sent events and why do LLM APIs stream with it? (one long HTTP response of
  `data: ...` lines; the first tokens reach the user after the time to first token, not after
  the whole answer; plain HTTP, so proxies and curl handle it)
- Why one engine thread and many connection threads? (the model runs one batched step at a time;
  connections mostly wait on the network, and the GIL is released inside torch's kernels)
- How does a server protect itself? (size limits on bodies, read deadlines and a connection cap
  against slow clients (slowloris), a bounded queue answering 503 + Retry-After instead of growing
  latency without bound, validation before any compute, cancelling the work of clients that went away)
- What is DNS rebinding and why does a localhost server check Host? (a page's domain re-resolved to
  127.0.0.1 makes the browser treat your server as that page's own origin; only the Host header
  still names the attacker's domain)
"""

import dataclasses
import hmac
import io
import ipaddress
import json
import queue
import select
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(REPO / "01_data"),
    str(REPO / "02_tokenizer"),
    str(REPO / "03_model"),
    str(REPO / "05_sft_lora"),
]
from common import UserError, option, parse_config, run_cli, set_interrupt_hint  # 01_data
from checkpoint_io import load_checkpoint  # 03_model
from devices import resolve_device  # 03_model
from gpt import GPT  # 03_model
from sample_text import load_tokenizer  # 03_model
from chat_template import ROLES, encode_prompt  # 05_sft_lora

from batching import POLICIES, Engine, QueueFull, Request  # this stage
from openai_api import (  # this stage
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    APIError,
    Reply,
    answer_count,
    chat_prompt_ids,
    check_known_fields,
    get_field,
    parse_body,
    sampling_params,
)
from serve_metrics import Metrics  # this stage

PAGE = Path(__file__).with_name("chat_page.html")


@dataclass
class ServeConfig:
    ckpt: str = option(
        "", "checkpoint to serve: runs/<name>/sft/adapter.pt (LoRA), sft/ckpt.pt (full) or pretrain/best.pt"
    )
    tokenizer: str = option("", "tokenizer folder (default: the one the checkpoint names)")
    host: str = option(
        "127.0.0.1",
        "address to listen on. WARNING: the server has no authentication unless "
        "--api-key is set, and no TLS; any other address lets everyone who can reach it use it",
    )
    port: int = option(8000, "TCP port (0 = any free port)", min=0, max=65535)
    api_key: str = option(
        "", "if set, /v1 and /metrics requests must send the header `Authorization: Bearer <key>`"
    )
    cors_origin: str = option(
        "",
        "web origins (comma-separated, e.g. http://localhost:3000, or *) whose pages may call the API; "
        "other cross-origin requests get 403",
    )
    model_name: str = option("", "the model id clients send and /v1/models lists (default: <run>/<folder>)")
    policy: str = option("continuous", "batching policy (batching.py)", choices=POLICIES)
    max_batch: int = option(8, "requests decoded together (KV-cache slots)", min=1)
    max_waiting: int = option(64, "requests that may wait for a slot; more get 503 + Retry-After", min=0)
    max_tokens: int = option(256, "max_tokens when a request gives none (capped by the context)", min=1)
    max_body_kib: int = option(256, "largest request body in KiB; larger ones get 413", min=1)
    timeout: float = option(
        10.0, "seconds a client has to send its headers, then its body, and to take each write", min=0.1
    )
    max_connections: int = option(128, "connections served at once; more get 503 + Retry-After", min=1)
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps")
    threads: int = option(0, "torch CPU threads (0 = torch's default)", min=0)
    quiet: bool = option(False, "do not log each request to stderr")


def load_model(ckpt, tokenizer="", device="cpu"):
    """(model, tokenizer) of any stage's checkpoint (module docstring), on `device`, in eval mode."""
    path = Path(ckpt)
    saved = load_checkpoint(path, map_location=device)
    if "peft" in saved:  # 05's adapter file: its base plus the adapter
        from sft import load_finetuned  # 05_sft_lora; only here: it imports all of 04

        model, tok, _ = load_finetuned(path.parent, device)
    else:
        model = GPT.from_checkpoint(path, map_location=device, ckpt=saved)
        tok = load_tokenizer(path, saved.get("tokenizer"), tokenizer)
    if tok.vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.cfg.vocab_size}; "
            "pass the tokenizer the model was trained with (--tokenizer)"
        )
    return model.eval(), tok


def model_from_flags(cfg, purpose) -> tuple:
    """(model, tokenizer) from the --ckpt, --tokenizer, --device and --threads flags that serve.py and
    chat.py share; `purpose` completes the message when --ckpt is missing ("to serve", "to talk to")."""
    if not cfg.ckpt:
        raise UserError(
            f"--ckpt is required: the checkpoint {purpose}, e.g. runs/tiny/sft/adapter.pt (LoRA SFT) "
            "or runs/tiny/pretrain/best.pt"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return load_model(cfg.ckpt, cfg.tokenizer, resolve_device(cfg.device))


def default_model_name(ckpt) -> str:
    """runs/tiny/sft/adapter.pt -> 'tiny/sft'."""
    path = Path(ckpt).resolve()
    return f"{path.parent.parent.name}/{path.parent.name}"


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


class ChatServer(ThreadingHTTPServer):
    """One thread per connection (daemon threads: Ctrl-C does not wait for slow clients), at most
    max_connections of them, and the engine's thread; handlers find the engine and settings here."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog; socketserver's 5 reset connections of a 20-client burst

    def __init__(
        self,
        address,
        engine: Engine,
        tok,
        model_name,
        api_key="",
        max_body=256 * 1024,
        default_max_tokens=256,
        log_requests=True,
        timeout=10.0,
        max_connections=128,
        cors_origins=(),
    ):
        super().__init__(address, Handler)
        self.engine, self.tok, self.model_name, self.api_key = engine, tok, model_name, api_key
        self.max_body, self.default_max_tokens, self.log_requests = max_body, default_max_tokens, log_requests
        self.timeout_s, self.max_connections, self.cors_origins = (
            timeout,
            max_connections,
            tuple(cors_origins),
        )
        self.created, self.host = int(time.time()), address[0]
        self.metrics = Metrics()
        self.open_connections, self.lock = 0, threading.Lock()

    def process_request(self, request, client_address):
        """A thread for the connection, or, past the cap, a short one that answers 503 and closes."""
        with self.lock:
            full = self.open_connections >= self.max_connections
            self.open_connections += not full
        if full:
            threading.Thread(target=self.refuse, args=(request,), daemon=True).start()
        else:
            super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.open_connections -= 1

    def refuse(self, sock):
        """503 to a connection over the cap. Its request head is read first (for at most a second):
        closing a socket with unread bytes sends a reset, and the client would not see the answer."""
        body = (
            b'{"error": {"message": "too many connections; retry shortly", "type": "server_error", '
            b'"param": null, "code": "server_overloaded"}}'
        )
        try:
            sock.settimeout(1.0)
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


# Each route: {method: Handler method}. GET /v1/models/{id} is matched by prefix.
ROUTES = {
    "/": {"GET": "page"},
    "/health": {"GET": "health"},
    "/metrics": {"GET": "metrics"},
    "/v1/models": {"GET": "models"},
    "/v1/models/": {"GET": "model"},
    "/v1/chat/completions": {"POST": "chat_completions"},
    "/v1/completions": {"POST": "completions"},
}
KEYED = ("/v1/", "/metrics")  # with --api-key, these need it


def route_of(path) -> str:
    """The ROUTES key a path falls under ('' for none): also the metrics' route label."""
    if path in ROUTES:
        return path
    return "/v1/models/" if path.startswith("/v1/models/") and len(path) > len("/v1/models/") else ""


class Handler(BaseHTTPRequestHandler):
    """One connection: the protocol's edges (deadlines, malformed lines, methods), who may call, then
    the endpoints. One request per connection (HTTP/1.0): a slow client holds one thread at most."""

    server: ChatServer
    server_version = "llm-from-scratch"
    cors_origin = None  # the Origin to echo in Access-Control-Allow-Origin, when --cors-origin allows it
    deadline = 0.0

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
            self.send_error(
                400, "the request line must be `METHOD /path HTTP/1.1` (HTTP/0.9 is not supported)"
            )
            return False
        return super().parse_request()

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors in the JSON shape, with a status line; 501 (it has no do_<METHOD>)
        becomes 405 with Allow, or 404."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # http.server writes no status line for it
            self.request_version = "HTTP/1.0"
        if code == 501 and getattr(self, "command", None):
            return self.route()
        self.send_json(code, APIError(code, message or self.responses.get(code, ("error",))[0]).body())

    def send_response(self, code, message=None):
        route = route_of(getattr(self, "path", "").split("?")[0])
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
            methods = ROUTES.get(route_of(path))
            if methods is None:
                known = ", ".join(
                    f"{m} {p}{'{id}' if p.endswith('/') else ''}" for p, ms in ROUTES.items() for m in ms
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
            if path.startswith(KEYED) and not self.has_key():
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

    def read_json(self, known) -> dict:
        """The request body as a checked JSON object (openai_api.parse_body), within the size limit
        and the deadline, naming only fields in `known`."""
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
        body = parse_body(raw)
        check_known_fields(body, known)
        model = get_field(body, "model", (str,))
        if model is not None and model != self.server.model_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {self.server.model_name!r}",
                param="model",
                code="model_not_found",
            )
        return body

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

    def send_event(self, obj):
        """One server-sent event: `data: <json>` and a blank line."""
        # >>> exercise: one server-sent event: the bytes `data: `, the JSON (or the bytes given), then a blank line
        self.wfile.write(
            b"data: "
            + (obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode())
            + b"\n\n"
        )
        # <<< exercise

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

    # -------- GET

    def page(self):
        self.send_bytes(200, PAGE.read_bytes(), "text/html; charset=utf-8")

    def health(self):
        """Liveness for anyone; the engine's state only for holders of the key (it tells an outsider
        the model's name and how busy the server is)."""
        if not self.has_key():
            self.send_json(200, {"status": "ok"})
            return
        engine = self.server.engine
        self.send_json(
            200,
            {
                "status": "ok",
                "model": self.server.model_name,
                "policy": engine.policy,
                "running": sum(r is not None for r in engine.slots),
                "waiting": len(engine.waiting),
                "stats": dict(engine.stats),
            },
        )

    def metrics(self):
        s = self.server
        text = s.metrics.render(s.engine, s.open_connections)
        self.send_bytes(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def model_card(self) -> dict:
        s = self.server
        return {
            "id": s.model_name,
            "object": "model",
            "created": s.created,
            "owned_by": "llm-from-scratch",
            "context_length": s.engine.model.cfg.block_size,
        }

    def models(self):
        self.send_json(200, {"object": "list", "data": [self.model_card()]})

    def model(self):
        name = self.path.split("?", 1)[0][len("/v1/models/") :]
        if name != self.server.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.server.model_name!r}",
                param="model",
                code="model_not_found",
            )
        self.send_json(200, self.model_card())

    # -------- POST

    def chat_completions(self):
        body = self.read_json(CHAT_FIELDS)
        try:
            ids = chat_prompt_ids(self.server.tok, body.get("messages"), ROLES, encode_prompt)
        except UserError as e:  # a tokenizer without chat tokens (a base model's may lack them)
            raise APIError(400, f"{e}; use /v1/completions with this model") from None
        self.generate(body, ids, chat=True)

    def completions(self):
        body = self.read_json(COMPLETION_FIELDS)
        prompt = get_field(body, "prompt", (str,))
        if prompt is None:
            raise APIError(400, "'prompt' (a string) is required", param="prompt")
        tok = self.server.tok
        # after <|endoftext|>, as every document began in pretraining
        self.generate(body, [tok.eot_id] + tok.encode_ordinary(prompt), chat=False)

    def generate(self, body, ids, chat):
        """Submit n requests for the prompt `ids`, then answer whole or streamed. Every special token
        ends an answer: none is text (a model that emits <|pad|> or <|user|> has finished its turn)."""
        s = self.server
        ctx, vocab = s.engine.model.cfg.block_size, s.engine.model.cfg.vocab_size
        params = sampling_params(body, len(ids), ctx, s.default_max_tokens, vocab, chat)
        n = answer_count(body)
        stream = get_field(body, "stream", (bool,), False)
        include_usage = get_field(
            get_field(body, "stream_options", (dict,), {}), "include_usage", (bool,), False
        )
        stop_ids = list(s.tok.special_tokens.values())
        reqs = [Request(ids, seeded(params, i), stop_ids) for i in range(n)]
        self.submit(reqs)
        reply = Reply(reqs, s.model_name, chat, s.tok)
        try:
            if stream:
                self.stream_reply(reqs, reply, include_usage)
                return
            while not all(r.done.wait(0.2) for r in reqs):
                if self.client_gone():
                    raise ClientGone
            if any(r.finish_reason == "error" for r in reqs):
                raise APIError(
                    500, "the engine failed on this request; see the server's log", kind="server_error"
                )
            self.send_json(200, reply.full())
        except BaseException:
            for r in reqs:
                r.cancel()
            raise
        finally:
            for r in reqs:
                if r.done.is_set():
                    s.metrics.observe(r)

    def submit(self, reqs):
        """Queue all n requests of a call, or none (a 503 when the queue cannot take them all)."""
        try:
            for r in reqs:
                self.server.engine.submit(r)
        except (QueueFull, UserError) as e:
            for r in reqs:
                r.cancel()
            if isinstance(e, UserError):
                raise APIError(400, str(e)) from None
            raise APIError(
                503,
                f"the server is busy ({e}); retry shortly",
                kind="server_error",
                code="server_overloaded",
                headers={"Retry-After": "1"},
            ) from None

    def stream_reply(self, reqs, reply, include_usage):
        """Chunks of every choice as their text appears (pieces of different choices interleave)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if reply.chat:
            for i in range(len(reqs)):
                self.send_event(reply.chunk(i, {"role": "assistant", "content": ""}))
        pending = list(range(len(reqs)))
        while pending:
            moved = False
            for i in list(pending):
                wait = (0.2 if len(pending) == 1 else 0.01) if i == pending[0] else 0
                try:
                    piece = reqs[i].deltas.get(timeout=wait) if wait else reqs[i].deltas.get_nowait()
                except queue.Empty:
                    continue
                moved = True
                if piece is not None:
                    self.send_event(reply.chunk(i, {"content": piece} if reply.chat else piece))
                    continue
                pending.remove(i)
                if reqs[i].finish_reason == "error":
                    self.send_event(
                        APIError(500, "the engine failed on this request", kind="server_error").body()
                    )
                else:
                    self.send_event(reply.chunk(i, {} if reply.chat else "", reqs[i].finish_reason))
            if not moved and self.client_gone():
                raise ClientGone
        if include_usage:
            self.send_event({**reply.head("chunk"), "choices": [], "usage": reply.usage()})
        self.send_event(b"[DONE]")


def seeded(params, i):
    """The i-th of n answers' settings: seed + i, so n seeded answers differ but repeat as a set."""
    if i == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=(params.seed + i) % 2**64)


# ----------------------------------------------------------------------------- command line


def main(argv=None):
    cfg, _ = parse_config(ServeConfig, argv, doc=__doc__)
    model, tok = model_from_flags(cfg, "to serve")
    name = cfg.model_name or default_model_name(cfg.ckpt)
    engine = Engine(model, tok, cfg.policy, cfg.max_batch, cfg.max_waiting)
    try:
        server = ChatServer(
            (cfg.host, cfg.port),
            engine,
            tok,
            name,
            cfg.api_key,
            cfg.max_body_kib * 1024,
            cfg.max_tokens,
            log_requests=not cfg.quiet,
            timeout=cfg.timeout,
            max_connections=cfg.max_connections,
            cors_origins=[o.strip().rstrip("/") for o in cfg.cors_origin.split(",") if o.strip()],
        )
    except OSError as e:  # port taken, address not on this machine, bad host name
        raise UserError(
            f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e}); choose another --port or --host"
        ) from None
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.api_key:
        print(
            f"warning: listening on {cfg.host} with no --api-key: anyone who can reach it can use it",
            file=sys.stderr,
        )
    host, port = server.server_address[:2]
    print(
        f"serving {name} ({model.num_params(non_embedding=False):,} parameters, context "
        f"{model.cfg.block_size}, {cfg.policy} batching of up to {cfg.max_batch}) on http://{host}:{port}/",
        flush=True,
    )
    set_interrupt_hint("the server stopped")
    engine.start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        engine.stop()


if __name__ == "__main__":
    run_cli(main)
