#!/usr/bin/env python3
"""The unchanged Anthropic Python SDK against `llmgw serve`'s /v1/messages.

    OPENAI_API_KEY=KEY python3 tests/anthropic_sdk.py BASE_URL/v1 [CHECK ...]

Run by tests/apis.rs, whose mock upstreams answer "<reply>" in a few chunks, and call
the first declared tool with {"city": "Paris"} unless the conversation ends with a tool
result. CHECKs:

  full:GROUP:REPLY        text, system prompt, streaming text (and its event sequence),
                          a streamed tool call whose input_json_delta pieces reassemble to
                          {"city": "Paris"}, a tool-result round trip, usage, stop reasons
  stop:GROUP:REASON       the stop reason of a plain answer, streamed and not
  bad:GROUP               a 400 from the upstream is the SDK's BadRequestError
  missing:GROUP           an unknown model group is the SDK's NotFoundError
  count:GROUP:N           count_tokens answers N (N = "any": some positive number)
  models:GROUP            the SDK's models.list() names GROUP
  passthrough:GROUP:BETA  a request with `anthropic-beta: BETA`; prints the exact bytes
                          the SDK sent (base64) after "SENT " and its anthropic-version
                          after "VERSION ", for the caller to compare

The key goes as `x-api-key` (api_key) and as `Authorization: Bearer` (auth_token, what
Claude Code's ANTHROPIC_AUTH_TOKEN does). Exits non-zero with a message on the first
thing that is wrong.
"""

import base64
import json
import os
import sys

import anthropic

TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather in a city",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def check(cond, what):
    if not cond:
        print(f"anthropic_sdk.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def full(client, group, reply):
    # Text.
    m = client.messages.create(model=group, max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
    check(isinstance(m, anthropic.types.Message), f"{group}: a Message: {m!r}")
    check(m.type == "message" and m.role == "assistant", f"{group}: message shape: {m!r}")
    check(text_of(m) == reply, f"{group}: text {text_of(m)!r} != {reply!r}")
    check(m.stop_reason == "end_turn", f"{group}: stop_reason {m.stop_reason!r}")
    check(m.usage.input_tokens > 0 and m.usage.output_tokens > 0, f"{group}: usage {m.usage!r}")
    check(m.id, f"{group}: an id")

    # System prompt, several turns.
    m = client.messages.create(
        model=group,
        max_tokens=64,
        system="Be brief.",
        stop_sequences=["\n\nHuman:"],
        metadata={"user_id": "u-42"},
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]},
        ],
    )
    check(text_of(m) == reply, f"{group}: system prompt answer {text_of(m)!r}")

    # Streaming text, with the SDK's helper and its event sequence.
    kinds = []
    with client.messages.stream(model=group, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]) as s:
        for ev in s:
            kinds.append(ev.type)
        final = s.get_final_message()
    check(text_of(final) == reply, f"{group}: streamed text {text_of(final)!r}")
    check(final.stop_reason == "end_turn", f"{group}: streamed stop_reason {final.stop_reason!r}")
    check(final.usage.output_tokens > 0, f"{group}: streamed usage {final.usage!r}")
    raw = [k for k in kinds if k not in ("text",)]
    check(raw[0] == "message_start", f"{group}: first event {raw[0]}")
    check(raw[-1] == "message_stop", f"{group}: last event {raw[-1]}")
    for k in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
        check(k in raw, f"{group}: a {k} event in {raw}")

    # A streamed tool call: the raw input_json_delta pieces reassemble to the arguments.
    pieces = []
    starts = []
    stream = client.messages.create(model=group, max_tokens=64, messages=ASK, tools=TOOLS, stream=True)
    stop = None
    for ev in stream:
        if ev.type == "content_block_start":
            starts.append(ev.content_block)
        elif ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
            pieces.append(ev.delta.partial_json)
        elif ev.type == "message_delta":
            stop = ev.delta.stop_reason
    tool_blocks = [b for b in starts if b.type == "tool_use"]
    check(len(tool_blocks) == 1, f"{group}: one tool_use block, got {starts!r}")
    check(tool_blocks[0].name == "get_weather", f"{group}: tool name {tool_blocks[0].name!r}")
    check(json.loads("".join(pieces)) == {"city": "Paris"}, f"{group}: input_json_delta {pieces!r}")
    check(stop == "tool_use", f"{group}: streamed tool stop_reason {stop!r}")

    # The same call, not streamed, then its result sent back: a text answer.
    m = client.messages.create(model=group, max_tokens=64, messages=ASK, tools=TOOLS)
    uses = [b for b in m.content if b.type == "tool_use"]
    check(len(uses) == 1 and uses[0].input == {"city": "Paris"}, f"{group}: tool_use {m.content!r}")
    check(m.stop_reason == "tool_use", f"{group}: tool stop_reason {m.stop_reason!r}")
    follow = ASK + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 degrees, sunny"}],
        },
    ]
    m = client.messages.create(model=group, max_tokens=64, messages=follow, tools=TOOLS)
    check(text_of(m) == reply, f"{group}: answer after the tool result {text_of(m)!r}")
    check(m.stop_reason == "end_turn", f"{group}: stop_reason after the tool result {m.stop_reason!r}")
    print(f"anthropic_sdk.py: full {group}: ok")


def stop(client, group, reason):
    m = client.messages.create(model=group, max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    check(m.stop_reason == reason, f"{group}: stop_reason {m.stop_reason!r} != {reason!r}")
    with client.messages.stream(model=group, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]) as s:
        final = s.get_final_message()
    check(final.stop_reason == reason, f"{group}: streamed stop_reason {final.stop_reason!r}")
    print(f"anthropic_sdk.py: stop {group} {reason}: ok")


def bad(client, group):
    for stream in (False, True):
        try:
            client.messages.create(
                model=group, max_tokens=5, messages=[{"role": "user", "content": "Hi"}], stream=stream
            )
        except anthropic.BadRequestError as e:
            check(e.status_code == 400, f"{group}: status {e.status_code}")
            check(e.body["type"] == "error", f"{group}: error body {e.body!r}")
            check(e.body["error"]["type"] == "invalid_request_error", f"{group}: error type {e.body!r}")
        else:
            check(False, f"{group}: a 400 upstream did not raise BadRequestError")
    print(f"anthropic_sdk.py: bad {group}: ok")


def missing(client, group):
    try:
        client.messages.create(model=group, max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    except anthropic.NotFoundError as e:
        check(e.body["error"]["type"] == "not_found_error", f"{group}: {e.body!r}")
    else:
        check(False, f"{group}: an unknown model did not raise NotFoundError")
    print(f"anthropic_sdk.py: missing {group}: ok")


def count(client, group, want):
    n = client.messages.count_tokens(
        model=group, system="Be brief.", messages=ASK, tools=TOOLS
    ).input_tokens
    if want == "any":
        check(n > 0, f"{group}: count_tokens {n}")
    else:
        check(n == int(want), f"{group}: count_tokens {n} != {want}")
    print(f"anthropic_sdk.py: count {group}: {n}")


def models(client, group):
    ids = [m.id for m in client.models.list()]
    check(group in ids, f"models.list(): {ids!r}")
    print(f"anthropic_sdk.py: models: {ids}")


def passthrough(base, key, group, beta):
    sent = []
    # The SDK's own HTTP client class, with a hook that sees each request as sent.
    http = anthropic.DefaultHttpxClient(event_hooks={"request": [sent.append]})
    client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, http_client=http)
    m = client.messages.create(
        model=group,
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hi  there\u00e9 \"quoted\""}],
        metadata={"user_id": "u-1"},
        extra_headers={"anthropic-beta": beta},
    )
    check(text_of(m), f"{group}: an answer {m!r}")
    print("SENT " + base64.b64encode(sent[-1].content).decode())
    print("VERSION " + sent[-1].headers["anthropic-version"])
    print(f"anthropic_sdk.py: passthrough {group}: ok")


def main():
    base = sys.argv[1].removesuffix("/").removesuffix("/v1")
    key = os.environ["OPENAI_API_KEY"]
    by_key = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
    by_token = anthropic.Anthropic(base_url=base, auth_token=key, max_retries=0)
    for i, spec in enumerate(sys.argv[2:]):
        kind, _, rest = spec.partition(":")
        # Alternate the two ways of sending the key.
        client = by_key if i % 2 == 0 else by_token
        if kind == "full":
            group, reply = rest.split(":", 1)
            full(client, group, reply)
        elif kind == "stop":
            group, reason = rest.split(":", 1)
            stop(client, group, reason)
        elif kind == "bad":
            bad(client, rest)
        elif kind == "missing":
            missing(client, rest)
        elif kind == "count":
            group, want = rest.split(":", 1)
            count(client, group, want)
        elif kind == "models":
            models(client, rest)
        elif kind == "passthrough":
            group, beta = rest.split(":", 1)
            passthrough(base, key, group, beta)
        else:
            check(False, f"unknown check {spec!r}")
    print("anthropic_sdk.py: OK")


if __name__ == "__main__":
    main()
