#!/usr/bin/env python3
"""The unchanged OpenAI Python SDK's Responses API (`client.responses.create`) against
`llmgw serve`'s /v1/responses.

    OPENAI_API_KEY=KEY python3 tests/openai_responses.py BASE_URL GROUP:REPLY ...

Run by tests/apis.rs, whose mock upstreams answer REPLY in a few chunks, and call the
first declared function tool with {"city": "Paris"} unless the input ends with the call's
output. For each group: text (string input, then items with instructions), streaming
with typed events, a function tool round trip (streamed and not), and a stored
response retrieved. Exits non-zero with a message on the first thing that is wrong.
"""

import json
import os
import sys

import openai
from openai import OpenAI

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def check(cond, what):
    if not cond:
        print(f"openai_responses.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def calls(resp):
    return [o for o in resp.output if o.type == "function_call"]


def run(client, group, reply):
    # Stored (OpenAI's default): retrievable; an unknown previous_response_id is a 400.
    r = client.responses.create(model=group, input="Hi", store=True)
    got = client.responses.retrieve(r.id)
    check(got.id == r.id and got.output_text == reply, f"{group}: retrieve {got!r}")
    try:
        client.responses.create(model=group, input="Hi", previous_response_id="resp_123")
    except openai.BadRequestError as e:
        check("not found" in str(e), f"{group}: unknown previous_response_id: {e}")
    else:
        check(False, f"{group}: an unknown previous_response_id was accepted")

    r = client.responses.create(model=group, input="Hi")
    check(r.object == "response" and r.status == "completed", f"{group}: {r!r}")
    check(r.output_text == reply, f"{group}: output_text {r.output_text!r} != {reply!r}")
    check(r.usage.input_tokens > 0 and r.usage.output_tokens > 0, f"{group}: usage {r.usage!r}")
    check(r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, f"{group}: total {r.usage!r}")

    r = client.responses.create(
        model=group,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "input_text", "text": "Again"}]},
        ],
        max_output_tokens=64,
        temperature=0.2,
    )
    check(r.output_text == reply, f"{group}: with instructions {r.output_text!r}")

    # Streaming, typed events.
    kinds, text, final = [], "", None
    for ev in client.responses.create(model=group, input="Hi", stream=True):
        kinds.append(ev.type)
        if ev.type == "response.output_text.delta":
            text += ev.delta
        elif ev.type == "response.completed":
            final = ev.response
    check(kinds[0] == "response.created", f"{group}: first event {kinds[:3]}")
    check(kinds[-1] == "response.completed", f"{group}: last event {kinds[-3:]}")
    for k in ("response.output_item.added", "response.output_text.done", "response.output_item.done"):
        check(k in kinds, f"{group}: a {k} event in {kinds}")
    check(text == reply, f"{group}: streamed text {text!r}")
    check(final is not None and final.output_text == reply, f"{group}: completed response {final!r}")
    check(final.usage is not None and final.usage.output_tokens > 0, f"{group}: streamed usage")

    # A function tool round trip, not streamed.
    r = client.responses.create(model=group, input=ASK, tools=TOOLS)
    cs = calls(r)
    check(len(cs) == 1 and cs[0].name == "get_weather", f"{group}: function call {r.output!r}")
    check(json.loads(cs[0].arguments) == {"city": "Paris"}, f"{group}: arguments {cs[0].arguments!r}")
    follow = ASK + [
        {"type": "function_call", "call_id": cs[0].call_id, "name": cs[0].name, "arguments": cs[0].arguments},
        {"type": "function_call_output", "call_id": cs[0].call_id, "output": "18 degrees, sunny"},
    ]
    r = client.responses.create(model=group, input=follow, tools=TOOLS)
    check(r.output_text == reply, f"{group}: answer after the call's output {r.output_text!r}")

    # Streamed: the argument deltas reassemble to the arguments.
    args, final = "", None
    for ev in client.responses.create(model=group, input=ASK, tools=TOOLS, stream=True):
        if ev.type == "response.function_call_arguments.delta":
            args += ev.delta
        elif ev.type == "response.completed":
            final = ev.response
    check(json.loads(args) == {"city": "Paris"}, f"{group}: streamed arguments {args!r}")
    check(final is not None and len(calls(final)) == 1, f"{group}: completed with the call {final!r}")
    # The previous answer's items sent back as they came (ids and statuses included).
    follow = ASK + [o.model_dump(exclude_none=True) for o in final.output] + [
        {"type": "function_call_output", "call_id": calls(final)[0].call_id, "output": "18 degrees"},
    ]
    r = client.responses.create(model=group, input=follow, tools=TOOLS)
    check(r.output_text == reply, f"{group}: answer after the streamed call's output {r.output_text!r}")

    print(f"openai_responses.py: {group}: ok")


def main():
    client = OpenAI(base_url=sys.argv[1], api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
    for spec in sys.argv[2:]:
        group, reply = spec.split(":", 1)
        run(client, group, reply)
    print("openai_responses.py: OK")


if __name__ == "__main__":
    main()
