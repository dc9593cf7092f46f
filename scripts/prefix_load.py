#!/usr/bin/env python3
"""The load of scripts/bench-prefix.sh: multi-user, multi-turn conversations.

    prefix_load.py BASE_URL --key KEY [--conversations 32] [--kinds 4] [--turns 10]
        [--concurrency 16] [--system-bytes 8000] [--question-bytes 2000] [--unique]

Each conversation has one of `--kinds` system prompts (about 2,000 tokens each by default)
and `--turns` turns; `--concurrency` workers take conversations from one queue and run
their turns in order, each turn a streamed chat completion carrying the whole history so
far (the answer appended before the next question). With --unique every request is a
fresh prompt of the same size instead (no shared prefixes). Prints one JSON line: requests,
failures, mean and p50/p99 time to first token, requests a second.
"""
import argparse
import asyncio
import json
import random
import string
import time

import httpx


def words(n, rng):
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))) for _ in range(n))


async def turn(client, base, key, messages):
    """One streamed request: (ok, ttft seconds, the answer's text)."""
    t = time.monotonic()
    ttft = None
    text = []
    try:
        async with client.stream(
            "POST",
            f"{base}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "m", "messages": messages, "stream": True, "max_tokens": 64},
        ) as r:
            if r.status_code != 200:
                await r.aread()
                return False, None, ""
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                for ch in ev.get("choices", []):
                    piece = (ch.get("delta") or {}).get("content")
                    if piece:
                        if ttft is None:
                            ttft = time.monotonic() - t
                        text.append(piece)
    except httpx.HTTPError:
        return False, None, ""
    return ttft is not None, ttft, "".join(text)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--key", required=True)
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--kinds", type=int, default=4)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--system-bytes", type=int, default=8000)
    ap.add_argument("--question-bytes", type=int, default=1000)
    ap.add_argument("--unique", action="store_true")
    a = ap.parse_args()
    rng = random.Random(42)
    systems = [words(a.system_bytes // 6, rng)[: a.system_bytes] for _ in range(a.kinds)]
    queue = asyncio.Queue()
    for c in range(a.conversations):
        queue.put_nowait(c)
    results = []

    async def worker(client):
        while True:
            try:
                c = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            crng = random.Random(c)
            messages = [{"role": "system", "content": systems[c % a.kinds]}]
            for t in range(a.turns):
                question = f"conversation {c} turn {t}: " + words(a.question_bytes // 6, crng)[: a.question_bytes]
                if a.unique:
                    # The same size, nothing shared with any other request.
                    msgs = [{"role": "system", "content": words(a.system_bytes // 6, crng)[: a.system_bytes]},
                            {"role": "user", "content": question + " " + words(t * a.question_bytes // 6, crng)}]
                    ok, ttft, _ = await turn(client, a.base, a.key, msgs)
                else:
                    messages.append({"role": "user", "content": question})
                    ok, ttft, answer = await turn(client, a.base, a.key, messages)
                    messages.append({"role": "assistant", "content": answer or "(no answer)"})
                results.append((ok, ttft))

    limits = httpx.Limits(max_connections=a.concurrency * 2, max_keepalive_connections=a.concurrency * 2)
    start = time.monotonic()
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300)) as client:
        await asyncio.gather(*(worker(client) for _ in range(a.concurrency)))
    elapsed = time.monotonic() - start
    ttfts = sorted(t for ok, t in results if ok)
    pick = lambda p: ttfts[min(len(ttfts) - 1, int(round(p / 100 * (len(ttfts) - 1))))] if ttfts else None
    print(json.dumps({
        "requests": len(results),
        "failed": sum(1 for ok, _ in results if not ok),
        "ttft_mean_ms": round(1000 * sum(ttfts) / len(ttfts), 1) if ttfts else None,
        "ttft_p50_ms": round(1000 * pick(50), 1) if ttfts else None,
        "ttft_p99_ms": round(1000 * pick(99), 1) if ttfts else None,
        "per_s": round(len(results) / elapsed, 2),
    }))


asyncio.run(main())
