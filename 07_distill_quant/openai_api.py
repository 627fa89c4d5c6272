"""OpenAI's wire format for serve.py: reading a request body without trusting it, checking every
field, and the response objects (whole answers, streamed chunks, log-probabilities).

    from openai_api import parse_body, sampling_params, chat_prompt_ids, Reply

Every problem becomes an APIError: a 4xx status and {"error": {"message", "type", "param", "code"}},
the shape OpenAI's clients parse. The rule is that nothing a client sends reaches the model or the
engine unchecked, and no field is silently ignored: an argument this server does not implement gets
a 400 naming it, as OpenAI's own API does for unknown arguments.

What a hostile body can do to a naive `json.loads(body)` and what stops it here (`parse_body`):
- a 5,000-digit integer: Python refuses to convert more than 4,300 digits (a ValueError, not a
  JSONDecodeError); a 4,000-digit one passes and must be range-checked before float() overflows;
- `[[[[...` 100,000 deep: RecursionError inside the parser;
- "\\ud800", a lone UTF-16 surrogate: valid JSON, but a str that cannot be encoded as UTF-8, so the
  tokenizer would fail deep inside the request;
- NaN and Infinity: accepted by Python's json, not JSON; a NaN compares False with everything.

Interview questions it answers:
- What do presence_penalty and frequency_penalty do? (subtract presence·[count > 0] +
  frequency·count from each token's logit, counting the tokens generated so far: batching.py)
- What are logprobs? (log p of each chosen token under the model, and the top alternatives: a
  confidence signal, used for classification by likelihood, calibration and reranking)
- Why validate before any compute? (a request costs nothing to refuse and a GPU-second to run; and an
  error found mid-batch can hurt the other requests in the batch)
"""

import json
import time
import uuid

from serve_request import PENALTY_RANGE, Request, SamplingParams  # this stage

MAX_DEPTH = 32  # deepest nesting of arrays/objects a body may have (OpenAI's bodies need ~5)
MAX_N = 8  # answers per request
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts

COMMON_FIELDS = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "user",  # an end-user id for abuse monitoring: nothing to do here
}
CHAT_FIELDS = COMMON_FIELDS | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",  # {"type": "text"} only
    "tools",  # absent or empty only
    "tool_choice",  # "none" only
    "parallel_tool_calls",  # meaningless without tools
    "metadata",
    "store",
}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "best_of", "echo", "suffix"}


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


# ----------------------------------------------------------------------------- the body


def refuse_constant(name):
    raise APIError(400, f"the body contains {name}, which is not JSON; send a number")


def parse_body(raw: bytes) -> dict:
    """The body as a JSON object whose every string is valid Unicode and whose nesting is bounded."""
    try:
        body = json.loads(raw, parse_constant=refuse_constant)
    except RecursionError:
        raise APIError(400, f"the body is nested too deeply; at most {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the body is not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise APIError(400, "the body is not valid UTF-8") from None
    except ValueError:  # Python's limit on integer digits (sys.get_int_max_str_digits)
        raise APIError(400, "a number in the body has too many digits; send numbers in range") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the body must be a JSON object, got {JSON_TYPE.get(type(body), type(body))}")
    check_values(body)
    return body


def check_values(body):
    """Walk the body (iteratively: a deep one must not exhaust the stack) for depth and lone surrogates."""
    todo = [(body, "", 1)]
    while todo:
        value, where, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, f"the body is nested too deeply at {where}; at most {MAX_DEPTH} levels")
        items = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        )
        for key, item in items:
            path = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key
            for text in (key, item):
                if isinstance(text, str):
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        raise APIError(
                            400,
                            f"{path} contains a lone UTF-16 surrogate (\\ud800-\\udfff without its pair), "
                            "which is not valid Unicode; send valid text",
                            param=path,
                        ) from None
            if isinstance(item, (dict, list)):
                todo.append((item, path, depth + 1))


def check_known_fields(body, known):
    """A 400 naming the first field this server does not implement (never a silent ignore)."""
    for name in body:
        if name not in known:
            raise APIError(
                400,
                f"unrecognized request argument {name!r}; this endpoint understands {', '.join(sorted(known))}",
                param=name,
                code="unsupported_parameter",
            )
    refuse_unless(body, "response_format", lambda v: v == {"type": "text"}, 'only {"type": "text"}')
    refuse_unless(body, "tools", lambda v: v == [], "this model has no tool calling; send no tools")
    refuse_unless(body, "tool_choice", lambda v: v == "none", 'only "none" (no tool calling)')
    refuse_unless(body, "echo", lambda v: v is False, "only false")
    refuse_unless(body, "suffix", lambda v: False, "not supported (no fill-in-the-middle)")
    refuse_unless(body, "best_of", lambda v: v == body.get("n", 1), "only equal to n (no reranking)")


def refuse_unless(body, name, ok, rule):
    if body.get(name) is not None and not ok(body[name]):
        raise APIError(400, f"{name!r} is {json.dumps(body[name])[:80]}: {rule}", param=name)


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


def number(body, name, default, lo, hi, rule=None):
    """A number field within [lo, hi] (checked before any float(): a 4,000-digit int would overflow)."""
    value = get_field(body, name, (int, float), default)
    check_range(name, value, lo <= value <= hi, rule or f"between {lo} and {hi}")
    return float(value)


def check_range(name, value, ok, rule):
    if not ok:
        shown = str(value) if len(str(value)) < 40 else f"{str(value)[:20]}... ({len(str(value))} digits)"
        raise APIError(400, f"'{name}' is {shown}; it must be {rule}", param=name)


# ----------------------------------------------------------------------------- the settings


def sampling_params(body, n_prompt, ctx, default_max_tokens, vocab_size, chat) -> SamplingParams:
    """The request's settings, each checked; max_tokens against the room the prompt leaves."""
    room = ctx - n_prompt
    if room < 1:
        raise APIError(
            400,
            f"the prompt is {n_prompt} tokens but the model's context is {ctx} tokens, which "
            "must also hold at least one generated token; shorten the prompt",
            param="messages" if chat else "prompt",
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
    top_p = get_field(body, "top_p", (int, float), 1.0)
    check_range("top_p", top_p, 0 < top_p <= 1, "in (0, 1]")
    top_k = get_field(body, "top_k", (int,))
    check_range("top_k", top_k, top_k is None or top_k >= 1, "at least 1 (or absent)")
    seed = get_field(body, "seed", (int,))
    check_range("seed", seed, seed is None or SEED_RANGE[0] <= seed <= SEED_RANGE[1], "a 64-bit integer")
    stop = get_field(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(
            400, "'stop' must be a non-empty string or an array of at most 4 of them", param="stop"
        )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=number(body, "temperature", 1.0, 0, 2, "between 0 and 2 (0 = greedy)"),
        top_p=float(top_p),
        top_k=top_k,
        repetition_penalty=number(
            body, "repetition_penalty", 1.0, *PENALTY_RANGE, "between 0.01 and 100 (1 = off)"
        ),
        presence_penalty=number(body, "presence_penalty", 0.0, -2, 2),
        frequency_penalty=number(body, "frequency_penalty", 0.0, -2, 2),
        logit_bias=logit_bias(body, vocab_size),
        logprobs=logprobs_wanted(body, chat),
        stop=tuple(stop),
        seed=seed,
    )


def logit_bias(body, vocab_size) -> dict | None:
    """{"token id": bias} -> {id: bias}, ids within the vocabulary, biases in [-100, 100]."""
    bias = get_field(body, "logit_bias", (dict,))
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        ok = (
            key.isdigit()
            and int(key) < vocab_size
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        )
        if not ok or not -100 <= value <= 100:
            raise APIError(
                400,
                f"logit_bias[{key!r}] = {json.dumps(value)[:40]}: keys must be token ids below {vocab_size}, "
                "values numbers between -100 and 100",
                param="logit_bias",
            )
        out[int(key)] = float(value)
    return out


def logprobs_wanted(body, chat) -> int | None:
    """How many alternatives to report per token (0 = the chosen one's only), or None for none. Chat:
    logprobs true and top_logprobs 0-20; completions: logprobs 0-5 (the legacy API's shape)."""
    if chat:
        on = get_field(body, "logprobs", (bool,), False)
        k = get_field(body, "top_logprobs", (int,))
        check_range("top_logprobs", k, k is None or (on and 0 <= k <= 20), "0 to 20, with logprobs: true")
        return (k or 0) if on else None
    k = get_field(body, "logprobs", (int,))
    check_range("logprobs", k, k is None or 0 <= k <= 5, "0 to 5 (alternatives per token)")
    return k


def answer_count(body) -> int:
    n = get_field(body, "n", (int,), 1)
    check_range("n", n, 1 <= n <= MAX_N, f"between 1 and {MAX_N}")
    return n


def message_text(m, i) -> str:
    """A message's content: a string, or OpenAI's array of {"type": "text", "text"} parts."""
    content = m.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        if all(isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise APIError(
            400, f"messages[{i}].content must be a string (or an array of text parts)", param=f"messages[{i}]"
        )
    return content


def chat_prompt_ids(tok, messages, roles, encode_prompt) -> list:
    """The conversation rendered by 05's template (encode_prompt), ending with the assistant marker."""
    if not isinstance(messages, list) or not messages:
        raise APIError(
            400, "'messages' must be a non-empty array of {role, content} objects", param="messages"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in roles:
            raise APIError(
                400,
                f"messages[{i}] must be an object with 'role' ({', '.join(roles)}) and a string 'content'",
                param=f"messages[{i}]",
            )
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "the last message is the assistant's; end with a user message", param="messages")
    return encode_prompt(
        tok, [{"role": m["role"], "content": message_text(m, i)} for i, m in enumerate(messages)]
    )


# ----------------------------------------------------------------------------- the answers


def token_text(tok, i) -> tuple:
    """(text, bytes) of one token id; a token may end inside a UTF-8 character, so text may hold U+FFFD."""
    raw = tok.vocab.get(i)
    if raw is None:
        raw = tok.id_to_special.get(i, "").encode()
    return raw.decode("utf-8", errors="replace"), raw


def answer_ids(req: Request) -> list:
    """The ids behind req.text: a final stop id is kept in output_ids but is not part of the answer."""
    ids = req.output_ids
    if ids and req.finish_reason == "stop" and ids[-1] in req.stop_ids and not req.params.ignore_eos:
        ids = ids[:-1]
    return ids


class Reply:
    """OpenAI's response objects for the n requests of one call: the whole answer, or streamed chunks."""

    def __init__(self, reqs, model_name, chat, tok):
        self.reqs, self.model, self.chat, self.tok = reqs, model_name, chat, tok
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.logprobs_sent = [0] * len(reqs)  # per choice: tokens whose logprobs were streamed

    def head(self, kind) -> dict:
        obj = (
            {"chat": "chat.completion", "chunk": "chat.completion.chunk"}[kind]
            if self.chat
            else "text_completion"
        )
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage(self) -> dict:
        n_in, n_out = len(self.reqs[0].prompt_ids), sum(len(r.output_ids) for r in self.reqs)
        return {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}

    def full(self) -> dict:
        choices = []
        for i, r in enumerate(self.reqs):
            lp = self.logprobs(i, len(answer_ids(r))) if r.params.logprobs is not None else None
            if self.chat:
                choice = {"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": lp}
            else:
                choice = {"index": i, "text": r.text, "logprobs": lp}
            choices.append({**choice, "finish_reason": r.finish_reason})
        return {**self.head("chat"), "choices": choices, "usage": self.usage()}

    def chunk(self, i, delta, finish_reason=None) -> dict:
        """One streamed piece of choice i, with the logprobs of the tokens generated since the last one."""
        r = self.reqs[i]
        lp = None
        if r.params.logprobs is not None:
            # until the end, hold back the newest token: it may be a stop id, which is not in the answer
            upto = len(answer_ids(r)) if finish_reason else max(0, len(r.logprobs) - 1)
            lp = self.logprobs(i, upto)
        choice = {"index": i, "delta": delta} if self.chat else {"index": i, "text": delta}
        return {**self.head("chunk"), "choices": [{**choice, "logprobs": lp, "finish_reason": finish_reason}]}

    def logprobs(self, i, upto) -> dict:
        """Choice i's log-probabilities for tokens [already sent, upto), in the endpoint's shape."""
        r, start = self.reqs[i], self.logprobs_sent[i]
        self.logprobs_sent[i] = max(start, upto)
        ids, entries = r.output_ids[start:upto], r.logprobs[start:upto]
        if self.chat:

            def one(t, lp):
                text, raw = token_text(self.tok, t)
                return {"token": text, "logprob": lp, "bytes": list(raw)}

            return {
                "content": [
                    {**one(t, lp), "top_logprobs": [one(a, alp) for a, alp in alts]}
                    for t, (lp, alts) in zip(ids, entries)
                ]
            }
        texts = [token_text(self.tok, t)[0] for t in ids]
        offsets = [sum(len(x) for x in texts[:k]) for k in range(len(texts))]
        return {
            "tokens": texts,
            "token_logprobs": [lp for lp, _ in entries],
            "top_logprobs": [{token_text(self.tok, a)[0]: alp for a, alp in alts} for _, alts in entries],
            "text_offset": offsets,
        }
