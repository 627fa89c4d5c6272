"""An OpenAI-compatible HTTP server for any checkpoint of this repository, standard library only.

    python 07_distill_quant/serve.py --ckpt runs/tiny/sft/ckpt.pt --port 8000
    open http://127.0.0.1:8000/                    # a small chat page, streaming
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Where does Noin Marora live?"}], "temperature": 0}'

Endpoints: POST /v1/chat/completions (messages rendered with 05's chat template; "stream": true sends
server-sent events, `data: {chunk}` lines ending with `data: [DONE]`), POST /v1/completions (plain
continuation of a prompt), GET /v1/models, GET /health, GET / (chat_page.html). Responses carry
usage token counts. Understood fields: model, messages / prompt, max_tokens (or
max_completion_tokens), temperature, top_p, stop, seed, n (1 only), stream, stream_options
.include_usage, and two extensions, top_k and repetition_penalty; other fields are ignored.

Checkpoints: 04's pretrain/best.pt or ckpt.pt, 05's sft/ckpt.pt (full fine-tuning) and sft/adapter.pt
(LoRA, prefix tuning or bottleneck adapters, loaded onto their base by 05's load_finetuned), any file
in 03's checkpoint format holding a GPT. The tokenizer is the one the checkpoint names (stored
relative to the checkpoint's folder), or --tokenizer.

How it is built: one ThreadingHTTPServer thread per connection parses and checks the request, then
hands a batching.Request to the one Engine thread (batching.py), which owns the model and decodes
every running request together; the handler thread streams the request's text as it appears. A
client that disconnects is noticed while it waits and its request is cancelled (its slot freed).
Bad requests get OpenAI's error shape, {"error": {"message", "type", "param", "code"}}, with a 4xx
status; a full queue gets 503 and Retry-After; a bug inside the engine gets 500; never a traceback.

Security: it binds 127.0.0.1. The server has no authentication unless --api-key is given, and no
TLS at all: put it behind a reverse proxy before exposing it beyond your machine.

Interview questions it answers:
- What is server-sent events and why do LLM APIs stream with it? (one long HTTP response of
  `data: ...` lines; the first tokens reach the user after the time to first token, not after
  the whole answer; plain HTTP, so proxies and curl handle it)
- Why one engine thread and many connection threads? (the model runs one batched step at a time;
  connections mostly wait on the network, and the GIL is released inside torch's kernels)
- How does a server protect itself? (size limits on bodies, a bounded queue answering 503 +
  Retry-After instead of growing latency without bound, validation before any compute, cancelling
  the work of clients that went away)
"""

import hmac
import json
import queue
import select
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "03_model"), str(REPO / "05_sft_lora")]
from common.cli import UserError, option, parse_config, run_cli, set_interrupt_hint
from chat_template import BOS, END, ROLES, encode_prompt  # 05_sft_lora

from batching import POLICIES, Engine, QueueFull, Request, SamplingParams  # this stage
from served_model import default_model_name, model_from_flags  # this stage

PAGE = Path(__file__).with_name("chat_page.html")


@dataclass
class ServeConfig:
    ckpt: str = option(
        "", "checkpoint to serve: runs/<name>/pretrain/best.pt, runs/<name>/sft/ckpt.pt or adapter.pt"
    )
    tokenizer: str = option("", "tokenizer folder (default: the one the checkpoint names)")
    host: str = option(
        "127.0.0.1",
        "address to listen on. WARNING: the server has no authentication unless "
        "--api-key is set, and no TLS; any other address lets everyone who can reach it use it",
    )
    port: int = option(8000, "TCP port (0 = any free port)", min=0, max=65535)
    api_key: str = option("", "if set, /v1 requests must send the header `Authorization: Bearer <key>`")
    model_name: str = option("", "the model id clients send and /v1/models lists (default: <run>/<folder>)")
    policy: str = option("continuous", "batching policy (batching.py)", choices=POLICIES)
    max_batch: int = option(8, "requests decoded together (KV-cache slots)", min=1)
    max_waiting: int = option(64, "requests that may wait for a slot; more get 503 + Retry-After", min=0)
    max_tokens: int = option(256, "max_tokens when a request gives none (capped by the context)", min=1)
    max_body_kib: int = option(256, "largest request body in KiB; larger ones get 413", min=1)
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps")
    threads: int = option(0, "torch CPU threads (0 = torch's default)", min=0)
    quiet: bool = option(False, "do not log each request to stderr")


# ----------------------------------------------------------------------------- checking a request


class APIError(Exception):
    """An answer in OpenAI's error shape: status, message, and what went wrong where."""

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.param, self.code, self.kind, self.headers = status, param, code, kind, headers or {}

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


JSON_TYPE = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def get_field(body, name, kinds, default=None):
    """body[name] when it is one of the Python types `kinds` (a JSON true is not a number here);
    `default` when absent or null; a 400 naming the field otherwise."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = "a number" if float in kinds else " or ".join(JSON_TYPE[k] for k in kinds)
        raise APIError(
            400,
            f"'{name}' must be {wanted}, got {JSON_TYPE.get(type(value), type(value).__name__)}",
            param=name,
        )
    return value


def check_range(name, value, ok, rule):
    if not ok:
        raise APIError(400, f"'{name}' is {value}; it must be {rule}", param=name)


def sampling_params(body, n_prompt, ctx, default_max_tokens) -> SamplingParams:
    """The request's settings, each checked; max_tokens against the room the prompt leaves."""
    room = ctx - n_prompt
    if room < 1:
        raise APIError(
            400,
            f"the prompt is {n_prompt} tokens but the model's context is {ctx} tokens, which "
            "must also hold at least one generated token; shorten the prompt",
            param="messages",
            code="context_length_exceeded",
        )
    max_tokens = get_field(body, "max_completion_tokens", (int,), get_field(body, "max_tokens", (int,)))
    if max_tokens is None:
        max_tokens = min(default_max_tokens, room)
    check_range("max_tokens", max_tokens, max_tokens >= 1, "at least 1")
    if max_tokens > room:
        raise APIError(
            400,
            f"the prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) = {n_prompt + max_tokens} "
            f"exceeds the model's context of {ctx} tokens; ask for at most {room} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    temperature = get_field(body, "temperature", (int, float), 1.0)
    check_range("temperature", temperature, 0 <= temperature <= 2, "between 0 and 2 (0 = greedy)")
    top_p = get_field(body, "top_p", (int, float), 1.0)
    check_range("top_p", top_p, 0 < top_p <= 1, "in (0, 1]")
    top_k = get_field(body, "top_k", (int,))
    check_range("top_k", top_k, top_k is None or top_k >= 1, "at least 1 (or absent)")
    penalty = get_field(body, "repetition_penalty", (int, float), 1.0)
    check_range("repetition_penalty", penalty, penalty > 0, "above 0 (1 = off)")
    n = get_field(body, "n", (int,), 1)
    check_range("n", n, n == 1, "1 (one answer per request)")
    stop = get_field(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(
            400, "'stop' must be a non-empty string or an array of at most 4 of them", param="stop"
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=top_k,
        repetition_penalty=float(penalty),
        stop=tuple(stop),
        seed=get_field(body, "seed", (int,)),
    )


def chat_prompt_ids(tok, messages) -> list:
    """The conversation rendered by 05's template, ending with the assistant marker."""
    if not isinstance(messages, list) or not messages:
        raise APIError(
            400, "'messages' must be a non-empty array of {role, content} objects", param="messages"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise APIError(
                400,
                f"messages[{i}] must be an object with 'role' ({', '.join(ROLES)}) and a string 'content'",
                param=f"messages[{i}]",
            )
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "the last message is the assistant's; end with a user message", param="messages")
    return encode_prompt(tok, [{"role": m["role"], "content": m["content"]} for m in messages])


# ----------------------------------------------------------------------------- the server


class ChatServer(ThreadingHTTPServer):
    """One thread per connection (daemon threads: Ctrl-C does not wait for slow clients) and the
    engine's thread; handlers find the engine, tokenizer and settings here."""

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
    ):
        super().__init__(address, Handler)
        self.engine, self.tok, self.model_name, self.api_key = engine, tok, model_name, api_key
        self.max_body, self.default_max_tokens, self.log_requests = max_body, default_max_tokens, log_requests
        self.created = int(time.time())


class ClientGone(Exception):
    """The client closed its connection; its request has been cancelled."""


class Handler(BaseHTTPRequestHandler):
    server: ChatServer
    server_version = "llm-from-scratch"

    def version_string(self):
        return self.server_version

    # -------- routing

    def do_GET(self):
        self.answer({"/": self.page, "/health": self.health, "/v1/models": self.models})

    def do_POST(self):
        self.answer({"/v1/chat/completions": self.chat_completions, "/v1/completions": self.completions})

    def answer(self, routes):
        try:
            path = self.path.split("?", 1)[0]
            if path not in routes:
                known = (
                    "GET /",
                    "GET /health",
                    "GET /v1/models",
                    "POST /v1/chat/completions",
                    "POST /v1/completions",
                )
                raise APIError(
                    404,
                    f"no route {self.command} {path}; this server has {', '.join(known)}",
                    code="unknown_url",
                )
            if path.startswith("/v1/"):
                self.check_api_key()
            routes[path]()
        except APIError as e:
            self.send_json(e.status, e.body(), e.headers)
        except ClientGone:
            pass
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left before its answer was written
        except Exception as e:  # a bug: say so in the server's log, not to the client
            self.log_error("internal error: %r", e)
            traceback.print_exc()
            err = APIError(500, "internal server error; see the server's log", kind="server_error")
            self.send_json(500, err.body())

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a malformed request line, an unsupported method) in the same JSON shape."""
        self.send_json(code, APIError(code, message or self.responses.get(code, ("error",))[0]).body())

    def check_api_key(self):
        key = self.server.api_key
        given = self.headers.get("Authorization", "")
        if key and not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise APIError(
                401,
                "missing or wrong API key; send the header `Authorization: Bearer <key>`",
                code="invalid_api_key",
            )

    # -------- reading and writing

    def read_json(self) -> dict:
        """The request body as a JSON object, within the size limit."""
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
        if length > limit:
            self.discard(min(length, 16 * limit))  # read it, so the client sees our answer, not a reset
            raise APIError(
                413, f"the body is {length} bytes; this server accepts at most {limit} (--max-body-kib)"
            )
        try:
            body = json.loads(self.rfile.read(max(length, 0)))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise APIError(
                400, f"the body must be a JSON object, got {JSON_TYPE.get(type(body), type(body).__name__)}"
            )
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
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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
        data = PAGE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def health(self):
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

    def models(self):
        s = self.server
        self.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": s.model_name,
                        "object": "model",
                        "created": s.created,
                        "owned_by": "llm-from-scratch",
                        "context_length": s.engine.model.cfg.block_size,
                    }
                ],
            },
        )

    # -------- POST

    def chat_completions(self):
        body = self.read_json()
        tok = self.server.tok
        try:
            ids = chat_prompt_ids(tok, body.get("messages"))
        except UserError as e:  # a tokenizer without chat tokens (a base model's may lack them)
            raise APIError(400, f"{e}; use /v1/completions with this model") from None
        stop_ids = [tok.special_tokens[END], tok.special_tokens[BOS]]
        self.generate(body, ids, stop_ids, chat=True)

    def completions(self):
        body = self.read_json()
        prompt = get_field(body, "prompt", (str,))
        if prompt is None:
            raise APIError(400, "'prompt' (a string) is required", param="prompt")
        tok = self.server.tok
        # after <|endoftext|>, as every document began in pretraining
        self.generate(body, [tok.eot_id] + tok.encode_ordinary(prompt), [tok.eot_id], chat=False)

    def generate(self, body, ids, stop_ids, chat):
        s = self.server
        params = sampling_params(body, len(ids), s.engine.model.cfg.block_size, s.default_max_tokens)
        stream = get_field(body, "stream", (bool,), False)
        include_usage = get_field(
            get_field(body, "stream_options", (dict,), {}), "include_usage", (bool,), False
        )
        req = Request(ids, params, stop_ids)
        try:
            s.engine.submit(req)
        except QueueFull as e:
            raise APIError(
                503,
                f"the server is busy ({e}); retry shortly",
                kind="server_error",
                code="server_overloaded",
                headers={"Retry-After": "1"},
            ) from None
        except UserError as e:
            raise APIError(400, str(e)) from None
        reply = Reply(req, s.model_name, chat)
        if stream:
            self.stream_reply(req, reply, include_usage)
            return
        while not req.done.wait(0.2):
            if self.client_gone():
                req.cancel()
                raise ClientGone
        if req.finish_reason == "error":
            raise APIError(
                500, "the engine failed on this request; see the server's log", kind="server_error"
            )
        self.send_json(200, reply.full())

    def stream_reply(self, req, reply, include_usage):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            if reply.chat:
                self.send_event(reply.chunk({"role": "assistant", "content": ""}))
            while True:
                try:
                    piece = req.deltas.get(timeout=0.2)
                except queue.Empty:
                    if self.client_gone():
                        raise ClientGone from None
                    continue
                if piece is None:
                    break
                self.send_event(reply.chunk({"content": piece} if reply.chat else piece))
            if req.finish_reason == "error":
                self.send_event(
                    APIError(500, "the engine failed on this request", kind="server_error").body()
                )
            else:
                self.send_event(reply.chunk({} if reply.chat else "", req.finish_reason))
                if include_usage:
                    self.send_event({**reply.head("chunk"), "choices": [], "usage": reply.usage()})
            self.send_event(b"[DONE]")
        except (ClientGone, BrokenPipeError, ConnectionResetError):
            req.cancel()
            raise ClientGone from None


class Reply:
    """OpenAI's response objects for one request: the whole answer, or one streamed chunk."""

    def __init__(self, req: Request, model_name, chat):
        self.req, self.model, self.chat = req, model_name, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def head(self, kind) -> dict:
        obj = (
            {"chat": "chat.completion", "chunk": "chat.completion.chunk"}[kind]
            if self.chat
            else "text_completion"
        )
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage(self) -> dict:
        n_in, n_out = len(self.req.prompt_ids), len(self.req.output_ids)
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

    def full(self) -> dict:
        r = self.req
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": r.text}}
            if self.chat
            else {"index": 0, "text": r.text, "logprobs": None}
        )
        return {
            **self.head("chat"),
            "choices": [{**choice, "finish_reason": r.finish_reason}],
            "usage": self.usage(),
        }

    def chunk(self, delta, finish_reason=None) -> dict:
        choice = {"index": 0, "delta": delta} if self.chat else {"index": 0, "text": delta, "logprobs": None}
        return {**self.head("chunk"), "choices": [{**choice, "finish_reason": finish_reason}]}


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
