"""The unchanged OpenAI Python SDK runs a 1,000-line batch through llmgw (issue 27).

Usage: batches_sdk.py BASE_URL OTHER_KEY   (OPENAI_API_KEY: the key that owns the batch)

Lines whose custom_id ends in 7 of each hundred ask for the group "cloud", which has no
local deployment: with [batches] allow_cloud = false they land in the error file.
"""

import json
import sys
import time

from openai import NotFoundError, OpenAI

base, other_key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, max_retries=0, timeout=60)

N = 1000
lines = []
for i in range(N):
    model = "cloud" if i % 100 == 7 else "m"
    lines.append(json.dumps({
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": 5,
                 "messages": [{"role": "user", "content": f"line-{i}"}]},
    }))
data = ("\n".join(lines) + "\n").encode()
to_cloud = {f"req-{i}" for i in range(N) if i % 100 == 7}

f = client.files.create(file=("sweep.jsonl", data), purpose="batch")
assert f.purpose == "batch" and f.bytes == len(data), f
assert client.files.retrieve(f.id).filename == "sweep.jsonl"
assert client.files.content(f.id).content == data

b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                          completion_window="24h", metadata={"sweep": "sdk"})
assert b.status == "in_progress" and b.request_counts.total == N, b
deadline = time.time() + 100
while b.status not in ("completed", "failed", "cancelled", "expired"):
    assert time.time() < deadline, f"batch not done in time: {b}"
    time.sleep(0.3)
    b = client.batches.retrieve(b.id)
assert b.status == "completed", b
assert b.request_counts.completed == N - len(to_cloud), b.request_counts
assert b.request_counts.failed == len(to_cloud), b.request_counts
assert b.metadata == {"sweep": "sdk"}, b.metadata

out = [json.loads(l) for l in client.files.content(b.output_file_id).text.splitlines()]
ids = [o["custom_id"] for o in out]
assert len(ids) == len(set(ids)) == N - len(to_cloud), len(ids)
assert set(ids) == {f"req-{i}" for i in range(N)} - to_cloud
for o in out:
    assert o["response"]["status_code"] == 200, o
    assert o["response"]["body"]["choices"][0]["message"]["content"], o
    assert o["error"] is None

errs = [json.loads(l) for l in client.files.content(b.error_file_id).text.splitlines()]
assert {e["custom_id"] for e in errs} == to_cloud, errs
for e in errs:
    assert e["error"]["code"] == "no_local_deployment", e
    assert "allow_cloud" in e["error"]["message"], e

assert any(x.id == b.id for x in client.batches.list())
assert any(x.id == b.output_file_id for x in client.files.list())

# Another key sees none of it.
other = OpenAI(base_url=base, api_key=other_key, max_retries=0)
for call in (lambda: other.files.content(b.output_file_id),
             lambda: other.files.retrieve(f.id),
             lambda: other.batches.retrieve(b.id),
             lambda: other.batches.cancel(b.id)):
    try:
        call()
        raise AssertionError("another key could see the batch or its files")
    except NotFoundError:
        pass
assert not [x for x in other.files.list()]

deleted = client.files.delete(f.id)
assert deleted.deleted
try:
    client.files.retrieve(f.id)
    raise AssertionError("a deleted file is still there")
except NotFoundError:
    pass
print("batches_sdk.py: OK", b.id)
