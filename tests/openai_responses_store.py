#!/usr/bin/env python3
"""Stored responses through the unchanged OpenAI Python SDK, against `llmgw serve`.

    OPENAI_API_KEY=KEY python3 tests/openai_responses_store.py BASE_URL GROUP REPLY OTHER_KEY

Run by tests/responses_store.rs, whose mock chat upstream answers REPLY. Three turns
chained with previous_response_id (the first with store=True, the second streamed, the
third with store left out: OpenAI's default is to store), then retrieve,
input_items.list, another key's 404, store=False, delete. Prints the ids as JSON on its
last line; exits non-zero with a message on the first thing that is wrong.
"""

import json
import os
import sys

import openai
from openai import OpenAI


def check(cond, what):
    if not cond:
        print(f"openai_responses_store.py: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    base, group, reply, other_key = sys.argv[1:5]
    client = OpenAI(base_url=base, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
    other = OpenAI(base_url=base, api_key=other_key, max_retries=0)

    r1 = client.responses.create(model=group, input="turn one", store=True)
    check(r1.output_text == reply, f"turn 1: {r1.output_text!r}")
    check(r1.store is True, f"turn 1 says store: {r1.store!r}")

    # Turn 2, streamed, continuing turn 1.
    final = None
    for ev in client.responses.create(
        model=group, input="turn two", previous_response_id=r1.id, stream=True
    ):
        if ev.type == "response.completed":
            final = ev.response
    check(final is not None and final.output_text == reply, f"turn 2: {final!r}")
    check(final.previous_response_id == r1.id, f"turn 2 continues {final.previous_response_id!r}")
    r2 = final

    # Turn 3: no `store` (stored all the same, as at OpenAI), continuing turn 2.
    r3 = client.responses.create(
        model=group,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "turn three"}]}],
        previous_response_id=r2.id,
    )
    check(r3.output_text == reply, f"turn 3: {r3.output_text!r}")

    got = client.responses.retrieve(r3.id)
    check(got.id == r3.id and got.output_text == reply, f"retrieve: {got!r}")
    check(got.previous_response_id == r2.id, f"retrieve: previous {got.previous_response_id!r}")
    items = client.responses.input_items.list(r3.id)
    texts = [c.text for i in items.data for c in (i.content or [])]
    check(texts == ["turn three"], f"input items of turn 3: {items!r}")
    items = client.responses.input_items.list(r1.id)
    check(items.data[0].id and items.data[0].role == "user", f"input items of turn 1: {items!r}")

    # Another key sees none of it.
    for call in (
        lambda: other.responses.retrieve(r1.id),
        lambda: other.responses.input_items.list(r1.id),
        lambda: other.responses.delete(r1.id),
    ):
        try:
            call()
        except openai.NotFoundError:
            pass
        else:
            check(False, "another key reached a stored response")
    try:
        other.responses.create(model=group, input="x", previous_response_id=r1.id)
    except openai.BadRequestError as e:
        check("not found" in str(e), f"another key's previous_response_id: {e}")
    else:
        check(False, "another key continued a stored response")

    # store=False keeps nothing.
    r4 = client.responses.create(model=group, input="not kept", store=False)
    check(r4.store is False, f"store=False says {r4.store!r}")
    try:
        client.responses.retrieve(r4.id)
    except openai.NotFoundError:
        pass
    else:
        check(False, "a store=False response was kept")

    # Delete: gone afterwards.
    r5 = client.responses.create(model=group, input="to delete")
    client.responses.delete(r5.id)
    try:
        client.responses.retrieve(r5.id)
    except openai.NotFoundError:
        pass
    else:
        check(False, "a deleted response is still there")

    print("openai_responses_store.py: OK")
    print(json.dumps({"r1": r1.id, "r2": r2.id, "r3": r3.id}))


if __name__ == "__main__":
    main()
