"""The LiteLLM Python SDK as a client of llmgw (tests/users.rs): `litellm.completion`
with `model="openai/<group>"`, `api_base`, `api_key` and `user=` names an end user.

LiteLLM 1.81 sends `user` only for model names it knows as OpenAI's (so the gateway's
group here is called `gpt-4o-mini`); for other names `extra_body={"user": ...}` does it
(group `local`).

usage: litellm_sdk_users.py BASE_URL   (a key with end_user_max_budget ~ one request in
                                         OPENAI_API_KEY)

End user "dan" is served once, then refused (litellm.RateLimitError, 429, naming him)
while "eve" is still served (and then refused too, through extra_body). Prints "ok" at the end; exits non-zero with a message on the
first thing that is wrong.
"""
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # noqa: E402


def check(cond, what):
    if not cond:
        print(f"litellm_sdk_users.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


base = sys.argv[1]
key = os.environ["OPENAI_API_KEY"]
msgs = [{"role": "user", "content": "Say hello"}]


def ask(user, known_name=True):
    named = {"user": user} if known_name else {"extra_body": {"user": user}}
    return litellm.completion(
        model="openai/gpt-4o-mini" if known_name else "openai/local",
        api_base=base,
        api_key=key,
        messages=msgs,
        max_tokens=5,
        num_retries=0,
        max_retries=0,
        **named,
    )


for user, known in [("dan", True), ("eve", False)]:
    r = ask(user, known)
    check(r.choices[0].message.content, f"{user}'s reply: {r!r}")
    try:
        ask(user, known)
        check(False, f"{user} was served over the end-user budget")
    except litellm.RateLimitError as e:
        check("end user" in str(e) and user in str(e), f"message: {e}")
print("ok")
