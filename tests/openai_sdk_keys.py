"""The OpenAI Python SDK with a virtual key (tests/keys.rs).

usage: openai_sdk_keys.py BASE_URL allowed|revoked   (the key in OPENAI_API_KEY)
"""
import sys

import openai

base, mode = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, max_retries=0, timeout=30)
msgs = [{"role": "user", "content": "Say hello"}]

if mode == "allowed":
    r = client.chat.completions.create(model="local", messages=msgs)
    assert r.choices[0].message.content, r
    # Streamed without include_usage: charged, but no usage chunk reaches the client.
    chunks = list(client.chat.completions.create(model="local", messages=msgs, stream=True))
    assert chunks and all(c.usage is None for c in chunks), chunks
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    try:
        client.chat.completions.create(model="other", messages=msgs)
        raise SystemExit("model 'other' should have been refused")
    except openai.PermissionDeniedError as e:
        assert e.status_code == 403, e
        assert "alice" in e.message and "local" in e.message, e.message
    ids = [m.id for m in client.models.list()]
    assert ids == ["local"], ids
    print("allowed ok")
elif mode == "revoked":
    try:
        client.chat.completions.create(model="local", messages=msgs)
        raise SystemExit("a revoked key should have been refused")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
        assert "alice" in e.message and "revoked" in e.message, e.message
    print("revoked ok")
else:
    raise SystemExit(f"unknown mode {mode}")
