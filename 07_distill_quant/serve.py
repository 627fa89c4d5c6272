"""An OpenAI-compatible HTTP server for any checkpoint of this repository, standard library only.

    python 07_distill_quant/serve.py --ckpt runs/tiny/sft/adapter.pt --port 8000
    python 07_distill_quant/serve.py --ckpt runs/tiny/sft/adapter.pt \
        --compare base=runs/tiny/pretrain/best.pt,dpo=runs/tiny/dpo/ckpt.pt,grpo=runs/tiny/grpo/ckpt.pt
    open http://127.0.0.1:8000/                    # a small chat page, streaming
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Where does Noin Marora live?"}], "temperature": 0}'
    curl http://127.0.0.1:8000/metrics             # Prometheus text format (serve_metrics.py)

Endpoints: POST /v1/chat/completions (messages rendered with 05's chat template; "stream": true sends
server-sent events, `data: {chunk}` lines ending with `data: [DONE]`), POST /v1/completions (plain
continuation of a prompt), GET /v1/models and /v1/models/{id}, GET /health, GET /metrics, GET / (the
chat page, chat_page.html), and one extension, POST /v1/feedback: a user's up/down rating of an answer
(with an optional better answer), appended to --feedback for the next SFT/DPO round (05's
feedback_data.py). With --compare it serves several checkpoints at once, each with its own engine:
the request's `model` field picks one (/v1/models lists them, the default first), and the chat page
gains a compare mode that asks every model the same question and shows the answers side by side
(base, SFT, DPO, PPO, GRPO: what each training stage changed, on one prompt). Responses carry usage token counts. Understood fields: model, messages /
prompt, max_tokens (or max_completion_tokens), temperature, top_p, stop, seed, n (up to 8 answers,
decoded together), stream, stream_options.include_usage, presence_penalty, frequency_penalty,
logit_bias, logprobs (and top_logprobs), and two extensions, top_k and repetition_penalty. Any other
field gets a 400 naming it (openai_api.py): nothing is silently ignored.

Checkpoints: 04's pretrain/best.pt or ckpt.pt, 05's sft/adapter.pt (LoRA, the default of sft.py,
prefix tuning or bottleneck adapters, loaded onto their base by 05's load_finetuned) or sft/ckpt.pt
(--method full), any file in 03's checkpoint format holding a GPT. The tokenizer is the one the
checkpoint names (stored relative to the checkpoint's folder), or --tokenizer.

How it is built: one ThreadingHTTPServer thread per connection (http_edge.py: deadlines, connection
cap, protocol edges, who may call) reads and checks the request (openai_api.py), then hands
serve_request.Requests to the one Engine thread (batching.py), which owns the model and decodes every
running request together; the handler thread streams the text as it appears. A failure while
sampling one request ends that request alone; a bug in the shared forward pass ends the running ones
with 500, and the server goes on. GET /metrics reports latency, errors, throughput and load
(serve_metrics.py).

What a client cannot do to it (each has a test in tests/test_07_serve.py; the README has the table):
- hold a thread for ever: headers, then body, within --timeout seconds each, every write of the answer
  taken within it; past --max-connections a new connection gets 503 + Retry-After at once;
- break other requests: settings are range-checked before any compute, the sampler maps the float32
  limits (batching.MIN_TEMPERATURE), and a failure inside one request's sampling is kept to it;
- drive it from a web page: another origin's request gets 403 unless --cors-origin names it, and
  without --api-key so does a Host header that is not an IP address or localhost (DNS rebinding);
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
import json
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path


# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "02_tokenizer"), str(REPO / "05_sft_lora")]
from common.cli import UserError, option, parse_config, run_cli, set_interrupt_hint
from common.devices import resolve_device
from chat_template import ROLES, encode_prompt  # 05_sft_lora
from feedback_data import append_feedback, feedback_path_for  # 05_sft_lora

from batching import POLICIES, Engine  # this stage
from serve_request import QueueFull, Request  # this stage
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
from http_edge import ClientGone, GuardedHandler, GuardedServer  # this stage
from served_model import default_model_name, load_model, model_from_flags  # this stage

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
    compare: list[str] = option(
        [],
        "more checkpoints to serve beside --ckpt, comma-separated, each name=path or a path (named "
        "<run>/<folder>), e.g. sft=runs/tiny/sft/adapter.pt,dpo=runs/tiny/dpo/ckpt.pt: a request's "
        "model field picks one, and the chat page's compare mode asks all of them the same question",
        sep=",",
    )
    feedback: str = option(
        "",
        "JSONL file the ratings of POST /v1/feedback are appended to (default: <run>/feedback/feedback.jsonl)",
    )
    policy: str = option("continuous", "batching policy (batching.py)", choices=POLICIES)
    max_batch: int = option(8, "requests decoded together (KV-cache slots)", min=1)
    max_waiting: int = option(64, "requests that may wait for a slot; more get 503 + Retry-After", min=0)
    prefix_blocks: int = option(
        128,
        "prefix cache: 16-token blocks of prompt keys/values kept for reuse (a system prompt, the earlier "
        "turns of a conversation; batching.py, prefix_cache.py); each costs 16·2·n_layer·n_embd floats; "
        "0 = off",
        min=0,
    )
    max_tokens: int = option(256, "max_tokens when a request gives none (capped by the context)", min=1)
    max_body_kib: int = option(256, "largest request body in KiB; larger ones get 413", min=1)
    timeout: float = option(
        10.0, "seconds a client has to send its headers, then its body, and to take each write", min=0.1
    )
    max_connections: int = option(128, "connections served at once; more get 503 + Retry-After", min=1)
    device: str = option("auto", "auto | cpu | cuda | cuda:N | mps")
    threads: int = option(0, "torch CPU threads (0 = torch's default)", min=0)
    quiet: bool = option(False, "do not log each request to stderr")


# ----------------------------------------------------------------------------- the server


@dataclass
class Served:
    """One model the server answers for: its id, its engine (one thread, its own KV-cache slots) and
    its tokenizer."""

    name: str
    engine: Engine
    tok: object


class ChatServer(GuardedServer):
    """http_edge's server plus what the handlers of this API need: the models, and the settings.
    `engine, tok, model_name` is the default model (a request naming no model gets it); `more` maps
    further ids to (engine, tok), each a model of its own with its own engine thread (--compare)."""

    def __init__(
        self,
        address,
        engine: Engine,
        tok,
        model_name,
        default_max_tokens=256,
        feedback_path=None,
        more=None,
        **edge,
    ):
        super().__init__(address, Handler, **edge)
        self.engine, self.tok, self.model_name = engine, tok, model_name
        self.models = {model_name: Served(model_name, engine, tok)}
        for name, (e, t) in (more or {}).items():
            self.models[name] = Served(name, e, t)
        self.feedback_path = feedback_path  # None: POST /v1/feedback answers 404
        self.default_max_tokens, self.created = default_max_tokens, int(time.time())

    def served(self, name) -> Served:
        """The model a request names (None: the default), or a 404 in OpenAI's shape."""
        if name is None:
            return self.models[self.model_name]
        if name not in self.models:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {', '.join(map(repr, self.models))}",
                param="model",
                code="model_not_found",
            )
        return self.models[name]


# Each route: {method: Handler method}. GET /v1/models/{id} is matched by prefix.
ROUTES = {
    "/": {"GET": "page"},
    "/health": {"GET": "health"},
    "/metrics": {"GET": "metrics"},
    "/v1/models": {"GET": "models"},
    "/v1/models/": {"GET": "model"},
    "/v1/chat/completions": {"POST": "chat_completions"},
    "/v1/completions": {"POST": "completions"},
    "/v1/feedback": {"POST": "feedback"},
}
FEEDBACK_FIELDS = {"model", "messages", "answer", "rating", "better"}


class Handler(GuardedHandler):
    """The API's endpoints; the protocol's edges and the caller checks are http_edge's."""

    server: ChatServer
    routes = ROUTES
    keyed = ("/v1/", "/metrics")  # with --api-key, these need it

    # -------- reading and writing

    def read_json(self, known) -> dict:
        """The request body as a checked JSON object (openai_api.parse_body), within the size limit
        and the deadline, naming only fields in `known`."""
        raw = self.read_body()
        body = parse_body(raw)
        check_known_fields(body, known)
        self.chosen = self.server.served(get_field(body, "model", (str,)))  # the model that answers
        return body

    def send_event(self, obj):
        """One server-sent event: `data: <json>` and a blank line."""
        # >>> exercise: one server-sent event: the bytes `data: `, the JSON (or the bytes given), then a blank line
        self.wfile.write(
            b"data: "
            + (obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode())
            + b"\n\n"
        )
        # <<< exercise

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
                "models": list(self.server.models),
                "policy": engine.policy,
                "running": sum(r is not None for r in engine.slots),
                "waiting": len(engine.waiting),
                "stats": dict(engine.stats),
            },
        )

    def metrics(self):
        s = self.server
        text = s.metrics.render([m.engine for m in s.models.values()], s.open_connections)
        self.send_bytes(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def model_card(self, m: Served) -> dict:
        return {
            "id": m.name,
            "object": "model",
            "created": self.server.created,
            "owned_by": "llm-from-scratch",
            "context_length": m.engine.model.cfg.block_size,
        }

    def models(self):
        """Every model served, the default first (the chat page asks the first one)."""
        cards = [self.model_card(m) for m in self.server.models.values()]
        self.send_json(200, {"object": "list", "data": cards})

    def model(self):
        name = self.path.split("?", 1)[0][len("/v1/models/") :]
        self.send_json(200, self.model_card(self.server.served(name)))

    # -------- POST

    def chat_completions(self):
        body = self.read_json(CHAT_FIELDS)
        try:
            ids = chat_prompt_ids(self.chosen.tok, body.get("messages"), ROLES, encode_prompt)
        except UserError as e:  # a tokenizer without chat tokens (a base model's may lack them)
            raise APIError(400, f"{e}; use /v1/completions with this model") from None
        self.generate(body, ids, chat=True)

    def completions(self):
        body = self.read_json(COMPLETION_FIELDS)
        prompt = get_field(body, "prompt", (str,))
        if prompt is None:
            raise APIError(400, "'prompt' (a string) is required", param="prompt")
        tok = self.chosen.tok
        # after <|endoftext|>, as every document began in pretraining
        self.generate(body, [tok.eot_id] + tok.encode_ordinary(prompt), chat=False)

    def feedback(self):
        """A rating of an answer, appended to the feedback file in this connection's thread, never the
        engine's: rating an answer does not slow anyone's decoding. 05's feedback_data checks it."""
        if self.server.feedback_path is None:
            raise APIError(404, "this server keeps no feedback; start it with --feedback FILE")
        body = self.read_json(FEEDBACK_FIELDS)
        body["model"] = self.chosen.name
        try:
            append_feedback(self.server.feedback_path, body)
        except UserError as e:
            raise APIError(400, str(e).removeprefix("request: ")) from None
        except OSError as e:  # disk full, permissions: the rating is lost, the server is fine
            raise APIError(500, f"could not save the rating: {e.strerror}") from None
        self.send_json(200, {"saved": True})

    def generate(self, body, ids, chat):
        """Submit n requests for the prompt `ids`, then answer whole or streamed. Every special token
        ends an answer: none is text (a model that emits <|pad|> or <|user|> has finished its turn)."""
        s, m = self.server, self.chosen
        ctx, vocab = m.engine.model.cfg.block_size, m.engine.model.cfg.vocab_size
        params = sampling_params(body, len(ids), ctx, s.default_max_tokens, vocab, chat)
        n = answer_count(body)
        stream = get_field(body, "stream", (bool,), False)
        include_usage = get_field(
            get_field(body, "stream_options", (dict,), {}), "include_usage", (bool,), False
        )
        stop_ids = list(m.tok.special_tokens.values())
        reqs = [Request(ids, seeded(params, i), stop_ids) for i in range(n)]
        self.submit(reqs)
        reply = Reply(reqs, m.name, chat, m.tok)
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
                self.chosen.engine.submit(r)
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
    # without --ckpt the name is "" and model_from_flags below says --ckpt is required
    name = cfg.model_name or (default_model_name(cfg.ckpt) if cfg.ckpt else "")
    others = compared_checkpoints(cfg.compare, taken={name})  # checked before minutes of loading
    model, tok = model_from_flags(cfg, "to serve")
    engine = Engine(model, tok, cfg.policy, cfg.max_batch, cfg.max_waiting, cfg.prefix_blocks)
    more = {}
    for other_name, path in others:
        m, t = load_model(path, cfg.tokenizer, resolve_device(cfg.device))
        more[other_name] = (Engine(m, t, cfg.policy, cfg.max_batch, cfg.max_waiting, cfg.prefix_blocks), t)
    try:
        server = ChatServer(
            (cfg.host, cfg.port),
            engine,
            tok,
            name,
            default_max_tokens=cfg.max_tokens,
            feedback_path=Path(cfg.feedback) if cfg.feedback else feedback_path_for(cfg.ckpt),
            more=more,
            api_key=cfg.api_key,
            max_body=cfg.max_body_kib * 1024,
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
        f"{model.cfg.block_size}, {cfg.policy} batching of up to {cfg.max_batch})"
        + (f" and {', '.join(more)}" if more else "")
        + f" on http://{host}:{port}/",
        flush=True,
    )
    set_interrupt_hint("the server stopped")
    engines = [m.engine for m in server.models.values()]
    for e in engines:
        e.start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        for e in engines:
            e.stop()


def compared_checkpoints(entries, taken) -> list:
    """[(model id, checkpoint path)] of --compare's `name=path` or `path` entries; the ids must be
    distinct from each other and from the default model's (`taken`), and each file must exist."""
    out, taken = [], set(taken)
    for entry in entries:
        name, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        name = name.strip() or default_model_name(path)
        if not Path(path).is_file():
            raise UserError(f"--compare: no checkpoint at {path}; give name=path of a file a stage wrote")
        if name in taken:
            raise UserError(f"--compare: the model id {name!r} is used twice; name each one (name=path)")
        taken.add(name)
        out.append((name, path))
    return out


if __name__ == "__main__":
    run_cli(main)
