#!/usr/bin/env python3
"""The unchanged OpenAI Python SDK streams tool calls through `llmgw serve` from an
OpenAI-backed, an Anthropic-backed and a Gemini-backed model group, and gets the same
object shapes from all three.

    OPENAI_API_KEY=anything python3 tests/openai_sdk_tools.py BASE_URL GROUP...

Run by tests/providers.rs (`openai_sdk_streams_tool_calls_from_every_provider`), whose
mock upstreams answer a request with tools by calling the first tool with
{"city": "Paris"}. The first GROUP is the reference (OpenAI-backed). Exits non-zero with
a message on the first thing that is wrong.
"""

import json
import sys

from openai import OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionChunk

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def check(cond, what):
    if not cond:
        print(f"openai_sdk_tools.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def shape(x):
    """The structure of a value: keys and value types, not the values."""
    if hasattr(x, "model_dump"):
        x = x.model_dump(exclude_none=True)
    if isinstance(x, dict):
        return {k: shape(v) for k, v in sorted(x.items())}
    if isinstance(x, list):
        return [shape(x[0])] if x else []
    return type(x).__name__


def streamed(client, model):
    """Streams a tool call; returns the shapes that matter and the assembled call."""
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    first_delta, later_deltas, finish, usage_chunk = None, set(), None, None
    calls = {}
    for chunk in stream:
        check(isinstance(chunk, ChatCompletionChunk), f"{model}: chunk type {type(chunk)}")
        check(chunk.object == "chat.completion.chunk", f"{model}: object {chunk.object}")
        if not chunk.choices:
            usage_chunk = chunk
            continue
        check(usage_chunk is None, f"{model}: a chunk with choices after the usage chunk")
        check(chunk.usage is None, f"{model}: usage on a content chunk")
        choice = chunk.choices[0]
        for tc in choice.delta.tool_calls or []:
            if tc.index not in calls:
                check(tc.id and tc.type == "function" and tc.function.name,
                      f"{model}: the first delta of a tool call lacks id/type/name: {tc}")
                calls[tc.index] = {"id": tc.id, "name": tc.function.name,
                                   "arguments": tc.function.arguments or ""}
                first_delta = shape(tc)
            else:
                check(tc.id is None and tc.function.name is None,
                      f"{model}: a later tool call delta repeats id/name: {tc}")
                calls[tc.index]["arguments"] += tc.function.arguments or ""
                later_deltas.add(json.dumps(shape(tc), sort_keys=True))
        if choice.finish_reason:
            finish = choice.finish_reason
    check(finish == "tool_calls", f"{model}: finish_reason {finish!r}")
    check(len(calls) == 1, f"{model}: {len(calls)} tool calls")
    call = calls[0]
    check(call["name"] == "get_weather", f"{model}: tool name {call['name']!r}")
    check(json.loads(call["arguments"]) == {"city": "Paris"},
          f"{model}: arguments {call['arguments']!r}")
    check(usage_chunk is not None, f"{model}: no usage chunk with include_usage")
    u = usage_chunk.usage
    check(u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens,
          f"{model}: usage {u}")
    usage_shape = {k: shape(getattr(u, k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return {"first_delta": first_delta, "later_deltas": sorted(later_deltas),
            "finish": finish, "usage": usage_shape}, call


def helper_stream(client, model):
    """The SDK's own accumulating stream helper: the final message's tool call."""
    with client.chat.completions.stream(model=model, messages=MESSAGES, tools=TOOLS) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    msg = final.choices[0].message
    check(final.choices[0].finish_reason == "tool_calls", f"{model}: helper finish_reason")
    check(msg.tool_calls and msg.tool_calls[0].function.name == "get_weather",
          f"{model}: helper tool calls {msg.tool_calls}")
    return shape(msg.tool_calls[0])


def non_streamed(client, model):
    r = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS)
    check(isinstance(r, ChatCompletion), f"{model}: type {type(r)}")
    msg = r.choices[0].message
    check(r.choices[0].finish_reason == "tool_calls", f"{model}: finish {r.choices[0].finish_reason}")
    check(json.loads(msg.tool_calls[0].function.arguments) == {"city": "Paris"},
          f"{model}: arguments {msg.tool_calls[0].function.arguments}")
    return shape(msg.tool_calls[0])


def round_trip(client, model, call):
    """Sends the tool result back; the model answers with text."""
    r = client.chat.completions.create(
        model=model,
        tools=TOOLS,
        messages=MESSAGES + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call["id"], "type": "function",
                 "function": {"name": call["name"], "arguments": call["arguments"]}}]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"},
        ],
    )
    check(r.choices[0].finish_reason == "stop", f"{model}: round trip finish {r.choices[0].finish_reason}")
    check(isinstance(r.choices[0].message.content, str) and r.choices[0].message.content,
          f"{model}: round trip content {r.choices[0].message.content!r}")


def main():
    if len(sys.argv) < 3:
        print("usage: openai_sdk_tools.py BASE_URL GROUP...", file=sys.stderr)
        sys.exit(2)
    client = OpenAI(base_url=sys.argv[1], max_retries=0, timeout=30.0)
    reference = None
    for model in sys.argv[2:]:
        shapes, call = streamed(client, model)
        shapes["helper"] = helper_stream(client, model)
        shapes["json"] = non_streamed(client, model)
        round_trip(client, model, call)
        if reference is None:
            reference = (model, shapes)
        else:
            for k, v in shapes.items():
                check(v == reference[1][k],
                      f"{model}: {k} shape {v} differs from {reference[0]}'s {reference[1][k]}")
        print(f"{model}: ok {json.dumps(shapes, sort_keys=True)}")
    print("openai_sdk_tools.py: all ok")


if __name__ == "__main__":
    main()
