"""The unchanged OpenAI Python SDK reads llmgw's rate-limit headers (tests/keys_headers.rs).

usage: openai_sdk_ratelimit.py BASE_URL RPM TPM   (the key in OPENAI_API_KEY)

Prints one line per request: `remaining-requests remaining-tokens cost`. Exits non-zero
with a message on the first thing that is wrong (explicit checks, not `assert`).
"""
import sys

import openai


def check(cond, what):
    if not cond:
        print(f"openai_sdk_ratelimit.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


base, rpm, tpm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = openai.OpenAI(base_url=base, max_retries=0, timeout=30)
msgs = [{"role": "user", "content": "Say hello"}]

for _ in range(3):
    raw = client.chat.completions.with_raw_response.create(
        model="local", messages=msgs, max_tokens=50
    )
    r = raw.parse()
    check(r.choices[0].message.content, f"a reply: {r!r}")
    h = raw.headers
    check(h.get("x-ratelimit-limit-requests") == str(rpm), f"limit-requests: {dict(h)!r}")
    check(h.get("x-ratelimit-limit-tokens") == str(tpm), f"limit-tokens: {dict(h)!r}")
    check(h.get("x-ratelimit-reset-requests", "").endswith("s"), f"reset: {dict(h)!r}")
    cost = float(h.get("x-llmgw-response-cost", "nan"))
    check(cost > 0, f"cost: {dict(h)!r}")
    print(h["x-ratelimit-remaining-requests"], h["x-ratelimit-remaining-tokens"], cost)

# A stream's headers carry the limits too (its cost is known only at its end).
with client.chat.completions.with_streaming_response.create(
    model="local", messages=msgs, stream=True
) as s:
    check(s.headers.get("x-ratelimit-remaining-requests") is not None, f"{dict(s.headers)!r}")
    text = "".join(
        c.choices[0].delta.content or "" for c in s.parse() if c.choices
    )
    check(text, "streamed text")
print("ok")
