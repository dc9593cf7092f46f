#!/usr/bin/env python3
"""The unchanged OpenAI Python SDK against a running `llmgw serve`.

    OPENAI_API_KEY=<gateway key> python3 tests/openai_sdk.py http://127.0.0.1:PORT/v1

Run by tests/openai_sdk.rs, which starts a mock upstream (reply "Hello from sdk-mock",
5 chunks, 100 ms apart), a mock Gemini API, and a gateway serving the model groups
"gpt-4o-mini", "text-embedding-3-small" (OpenAI-compatible) and "gemini-embed" (Gemini).
Plain client code, as a user would write it; exits non-zero with a message on the first
thing that is wrong.
"""

import struct
import sys
import time

import openai
from openai import OpenAI

EXPECTED_REPLY = "Hello from sdk-mock"
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
GEMINI_EMBED_MODEL = "gemini-embed"


def check(cond, what):
    if not cond:
        print(f"openai_sdk.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    if len(sys.argv) != 2:
        print("usage: openai_sdk.py BASE_URL", file=sys.stderr)
        sys.exit(2)
    # The key comes from OPENAI_API_KEY, as in any user's script.
    client = OpenAI(base_url=sys.argv[1], max_retries=0, timeout=30.0)

    # 1. A chat completion.
    r = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
    )
    check(r.choices[0].message.content == EXPECTED_REPLY, f"chat reply: {r!r}")
    check(r.choices[0].finish_reason == "stop", f"finish_reason: {r!r}")
    check(r.usage is not None and r.usage.total_tokens > 0, f"usage: {r.usage!r}")
    print(f"chat: {r.choices[0].message.content!r}")

    # 2. A streamed completion: chunks arrive one by one, [DONE] ends the iteration.
    start = time.monotonic()
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals, pieces, usage, finish = [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                arrivals.append(time.monotonic() - start)
                pieces.append(delta.content)
            if chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    check("".join(pieces) == EXPECTED_REPLY, f"streamed text: {pieces!r}")
    check(len(pieces) == 5, f"5 content chunks, got {len(pieces)}")
    # The mock waits 100 ms between chunks: 400 ms between the first and the last.
    # A buffering gateway would deliver them all at once.
    spread = arrivals[-1] - arrivals[0]
    check(spread >= 0.2, f"chunks arrived together (spread {spread:.3f}s): {arrivals!r}")
    check(finish == "stop", f"finish_reason in stream: {finish!r}")
    check(usage is not None and usage.total_tokens > 0, f"stream usage: {usage!r}")
    print(f"stream: {len(pieces)} chunks over {spread:.3f}s: {pieces!r}")

    # 3. An embedding.
    e = client.embeddings.create(model=EMBED_MODEL, input="hello world")
    check(len(e.data) == 1, f"one embedding: {e!r}")
    check(len(e.data[0].embedding) == 8, f"8 dimensions: {e.data[0].embedding!r}")
    check(all(isinstance(x, float) for x in e.data[0].embedding), "floats")
    print(f"embedding: {len(e.data[0].embedding)} dims")

    # 3b. Embeddings with the SDK's defaults, which ask for base64 on the wire, on an
    # OpenAI-compatible group (passed through) and on Gemini (translated): the same
    # vectors as encoding_format="float", to float32 precision (what base64 carries).
    for model in (EMBED_MODEL, GEMINI_EMBED_MODEL):
        texts = ["hello world", "another text"]
        raw = client.embeddings.with_raw_response.create(model=model, input=texts)
        wire = raw.http_response.json()["data"]
        check(
            all(isinstance(d["embedding"], str) for d in wire),
            f"{model}: base64 strings on the wire: {wire!r}",
        )
        default = [d.embedding for d in raw.parse().data]
        floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
        as_f32 = [
            list(struct.unpack(f"<{len(d.embedding)}f", struct.pack(f"<{len(d.embedding)}f", *d.embedding)))
            for d in floats.data
        ]
        check(len(default) == 2 and all(len(v) == 8 for v in default), f"{model}: {default!r}")
        check(default == as_f32, f"{model}: default {default!r} != float {as_f32!r}")
        print(f"embedding {model}: SDK default (base64) == float, {len(default[0])} dims")

    # 4. The model list: the gateway's configured names.
    ids = [m.id for m in client.models.list()]
    check(ids == [CHAT_MODEL, EMBED_MODEL, GEMINI_EMBED_MODEL], f"models: {ids!r}")
    print(f"models: {ids!r}")

    # 5. Errors map to the SDK's exception classes.
    try:
        client.chat.completions.create(model="no-such-model", messages=[])
        check(False, "unknown model must raise")
    except openai.NotFoundError as err:
        check("no-such-model" in str(err), f"404 message: {err}")
    bad = OpenAI(base_url=sys.argv[1], api_key="sk-wrong", max_retries=0, timeout=30.0)
    try:
        bad.models.list()
        check(False, "a wrong key must raise")
    except openai.AuthenticationError:
        pass
    print("errors: NotFoundError, AuthenticationError")
    print("openai_sdk.py: OK")


if __name__ == "__main__":
    main()
