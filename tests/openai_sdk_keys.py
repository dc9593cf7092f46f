"""The OpenAI Python SDK with a virtual key (tests/keys.rs).

usage: openai_sdk_keys.py BASE_URL allowed|revoked   (the key in OPENAI_API_KEY)

Exits non-zero with a message on the first thing that is wrong (explicit checks, not
`assert`, which `python3 -O` / PYTHONOPTIMIZE would skip).
"""
import sys

import openai


def check(cond, what):
    if not cond:
        print(f"openai_sdk_keys.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


base, mode = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, max_retries=0, timeout=30)
msgs = [{"role": "user", "content": "Say hello"}]

if mode == "allowed":
    r = client.chat.completions.create(model="local", messages=msgs)
    check(r.choices[0].message.content, f"a reply: {r!r}")
    # Streamed without include_usage: charged, but no usage chunk reaches the client.
    chunks = list(client.chat.completions.create(model="local", messages=msgs, stream=True))
    check(chunks and all(c.usage is None for c in chunks), f"no usage chunk: {chunks!r}")
    check(
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        f"streamed text: {chunks!r}",
    )
    try:
        client.chat.completions.create(model="other", messages=msgs)
        check(False, "model 'other' should have been refused")
    except openai.PermissionDeniedError as e:
        check(e.status_code == 403, f"status {e.status_code}: {e}")
        check("alice" in e.message and "local" in e.message, f"message: {e.message}")
    ids = [m.id for m in client.models.list()]
    check(ids == ["local"], f"models: {ids!r}")
    print("allowed ok")
elif mode == "revoked":
    try:
        client.chat.completions.create(model="local", messages=msgs)
        check(False, "a revoked key should have been refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"status {e.status_code}: {e}")
        check("alice" in e.message and "revoked" in e.message, f"message: {e.message}")
    print("revoked ok")
else:
    check(False, f"unknown mode {mode}")
