#!/usr/bin/env python3
"""The load of scripts/bench-fair.sh: one key floods, another asks now and then.

    fair_load.py BASE_URL --flood KEY --probe KEY [--flood-class batch] [--probe-class
        interactive] [--in-flight 150] [--seconds 60] [--rate 2] [--second-flood KEY]

Phases, each printed as one JSON line:
  idle:  the probe key alone, `--rate` requests a second for 10 s: its latency on an idle
         gateway (the baseline);
  flood: the flood key keeps `--in-flight` requests in flight for `--seconds` while the
         probe key sends `--rate` a second: the probe's p50/p99 (and their ratio to idle),
         the flood's completions a second, failures of each;
  With --second-flood: two keys flood side by side (no probe), each's share of the
  completions.
Every request is a small non-streamed chat completion; a non-200 answer counts as failed.
"""
import argparse
import asyncio
import json
import statistics
import time

import httpx


def body(tag):
    return {"model": "m", "messages": [{"role": "user", "content": tag}], "max_tokens": 16}


async def one(client, base, key, tag, klass):
    headers = {"authorization": f"Bearer {key}"}
    if klass:
        headers["x-llmgw-priority"] = klass
    t = time.monotonic()
    try:
        r = await client.post(f"{base}/v1/chat/completions", json=body(tag), headers=headers)
        ok = r.status_code == 200
    except httpx.HTTPError:
        ok = False
    return ok, time.monotonic() - t


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def probe(client, base, key, klass, rate, seconds, out):
    """`rate` requests a second for `seconds`, each on its own task (open loop)."""
    tasks = []
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        tasks.append(asyncio.create_task(one(client, base, key, f"probe{i}", klass)))
        i += 1
        await asyncio.sleep(1 / rate)
    for ok, lat in await asyncio.gather(*tasks):
        out.append((ok, lat))


async def flood(client, base, key, klass, in_flight, stop, out):
    async def worker(w):
        n = 0
        while not stop.is_set():
            out.append(await one(client, base, key, f"flood{w}-{n}", klass))
            n += 1

    await asyncio.gather(*(worker(w) for w in range(in_flight)))


def summary(name, probe_out, idle_p50=None, idle_p99=None):
    lats = [lat for ok, lat in probe_out if ok]
    d = {
        "phase": name,
        "n": len(probe_out),
        "failed": sum(1 for ok, _ in probe_out if not ok),
        "p50_ms": round(1000 * pct(lats, 50), 1) if lats else None,
        "p99_ms": round(1000 * pct(lats, 99), 1) if lats else None,
    }
    if idle_p50 and lats:
        d["p50_vs_idle"] = round(pct(lats, 50) / idle_p50, 2)
        d["p99_vs_idle"] = round(pct(lats, 99) / idle_p99, 2)
    return d


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("--flood", required=True)
    ap.add_argument("--probe")
    ap.add_argument("--second-flood")
    ap.add_argument("--flood-class")
    ap.add_argument("--probe-class")
    ap.add_argument("--in-flight", type=int, default=150)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=float, default=2)
    ap.add_argument("--warmup", type=float, default=10)
    a = ap.parse_args()
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(900)) as client:
        if a.second_flood:
            stop = asyncio.Event()
            one_out, two_out = [], []
            runs = [
                asyncio.create_task(flood(client, a.base, a.flood, a.flood_class, a.in_flight, stop, one_out)),
                asyncio.create_task(flood(client, a.base, a.second_flood, a.flood_class, a.in_flight, stop, two_out)),
            ]
            await asyncio.sleep(5)  # both queues full before counting
            one_out.clear()
            two_out.clear()
            await asyncio.sleep(a.seconds)
            n1 = sum(1 for ok, _ in one_out if ok)
            n2 = sum(1 for ok, _ in two_out if ok)
            stop.set()
            await asyncio.gather(*runs)
            print(json.dumps({"phase": "two floods", "first": n1, "second": n2,
                              "first_share": round(n1 / max(1, n1 + n2), 3),
                              "failed": sum(1 for ok, _ in one_out + two_out if not ok)}))
            return
        idle = []
        await probe(client, a.base, a.probe, a.probe_class, a.rate, 10, idle)
        s_idle = summary("idle", idle)
        print(json.dumps(s_idle))
        idle_lats = [lat for ok, lat in idle if ok]
        stop = asyncio.Event()
        flood_out = []
        run = asyncio.create_task(flood(client, a.base, a.flood, a.flood_class, a.in_flight, stop, flood_out))
        # The flood under way, and the backlog a fresh gateway let into the backend before
        # it had learned the backend's capacity (nothing is held until then) drained.
        await asyncio.sleep(a.warmup)
        flood_out.clear()
        t0 = time.monotonic()
        probed = []
        await probe(client, a.base, a.probe, a.probe_class, a.rate, a.seconds, probed)
        elapsed = time.monotonic() - t0
        done = sum(1 for ok, _ in flood_out if ok)
        stop.set()
        await run
        s = summary("flood", probed, pct(idle_lats, 50), pct(idle_lats, 99))
        s["flood_per_s"] = round(done / elapsed, 2)
        probe_done = sum(1 for ok, _ in probed if ok)
        s["all_per_s"] = round((done + probe_done) / elapsed, 2)
        s["flood_failed"] = sum(1 for ok, _ in flood_out if not ok)
        print(json.dumps(s))


asyncio.run(main())
