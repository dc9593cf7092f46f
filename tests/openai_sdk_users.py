"""The unchanged OpenAI Python SDK names end users with `user=` (tests/users.rs).

usage: openai_sdk_users.py BASE_URL   (a key with end_user_max_budget ~ one request,
                                        rpm_limit 100, in OPENAI_API_KEY)

End user "ann" is served once (with the rate-limit headers and the cost, read with
`with_raw_response`), then refused with RateLimitError (429 budget_exceeded) naming
her, while "ben" is still served, through chat completions, completions and embeddings
(whose `user` field names an end user the same way). Prints "ok" at the end; exits
non-zero with a message on the first thing that is wrong.
"""
import sys

import openai


def check(cond, what):
    if not cond:
        print(f"openai_sdk_users.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


base = sys.argv[1]
client = openai.OpenAI(base_url=base, max_retries=0, timeout=30)
msgs = [{"role": "user", "content": "Say hello"}]

raw = client.chat.completions.with_raw_response.create(
    model="local", messages=msgs, max_tokens=5, user="ann"
)
r = raw.parse()
check(r.choices[0].message.content, f"a reply: {r!r}")
check(raw.headers.get("x-ratelimit-limit-requests") == "100", f"{dict(raw.headers)!r}")
check(float(raw.headers.get("x-llmgw-response-cost", "0")) > 0, f"{dict(raw.headers)!r}")

try:
    client.chat.completions.create(model="local", messages=msgs, max_tokens=5, user="ann")
    check(False, "ann was served over her budget")
except openai.RateLimitError as e:
    body = e.body if isinstance(e.body, dict) else {}
    check(e.status_code == 429, f"status {e.status_code}")
    check("end user" in str(e) and "ann" in str(e), f"message: {e}")
    check(body.get("type") == "budget_exceeded" or "budget" in str(e), f"type: {body!r}")

# Another end user of the same key is served, on every endpoint with a `user` field.
r = client.chat.completions.create(model="local", messages=msgs, max_tokens=5, user="ben")
check(r.choices[0].message.content, "ben's chat reply")
c = client.completions.create(model="local", prompt="Say hello", max_tokens=5, user="cat")
check(c.choices, f"cat's completion: {c!r}")
try:
    client.completions.create(model="local", prompt="Say hello", max_tokens=5, user="cat")
    check(False, "cat was served over her budget")
except openai.RateLimitError:
    pass
print("ok")
