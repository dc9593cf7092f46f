#!/usr/bin/env python3
"""The load of scripts/bench-retention.sh: a steady, bounded rate of small chat
completions with a virtual key, alternating between two gateways that differ only in
`[store] retention` (A prunes, B keeps everything), so both see the same load at the
same moments on the same machine.

    retention_load.py --a URL --a-key KEY --a-db PATH --b URL --b-key KEY --b-db PATH
        --master KEY [--rate 200] [--seconds 300] [--in-flight 64]

Every minute (and at the start and end) it samples each database's size (the file, and
`/health`'s store object: pruned rows). At the end it prints:
  - a Markdown table of the size per minute (A next to B),
  - each gateway's p50/p99 client latency and failures over the whole run,
  - each gateway's `/spend/report` for the whole run against the requests it answered.
A request that cannot start because `--in-flight` requests are already open is counted
as skipped (the rate is then not met; the line says so).
"""
import argparse
import asyncio
import json
import os
import time

import httpx


def body(i):
    return {"model": "m", "messages": [{"role": "user", "content": f"r{i}"}], "max_tokens": 16}


def quantile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def db_bytes(path):
    total = 0
    for p in (path, path + "-journal"):
        try:
            total += os.stat(p).st_size
        except FileNotFoundError:
            pass
    return total


async def health(client, base, master):
    r = await client.get(f"{base}/health", headers={"authorization": f"Bearer {master}"})
    return r.json().get("store", {})


async def main():
    ap = argparse.ArgumentParser()
    for side in ("a", "b"):
        ap.add_argument(f"--{side}", required=True)
        ap.add_argument(f"--{side}-key", required=True)
        ap.add_argument(f"--{side}-db", required=True)
    ap.add_argument("--master", required=True)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--in-flight", type=int, default=64)
    args = ap.parse_args()
    sides = [
        {"name": "A", "base": args.a, "key": args.a_key, "db": args.a_db, "lat": [], "ok": 0, "fail": 0},
        {"name": "B", "base": args.b, "key": args.b_key, "db": args.b_db, "lat": [], "ok": 0, "fail": 0},
    ]
    limits = httpx.Limits(max_connections=args.in_flight * 2, max_keepalive_connections=args.in_flight * 2)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        start_wall = time.time()
        t0 = time.monotonic()
        open_now = 0
        skipped = 0
        samples = []

        async def sample(minute):
            row = {"minute": minute}
            for s in sides:
                h = await health(client, s["base"], args.master)
                row[s["name"]] = {"file": db_bytes(s["db"]), "store": h.get("bytes"),
                                  "pruned": h.get("pruned_rows"), "dropped": h.get("rows_dropped")}
            samples.append(row)

        async def one(i):
            nonlocal open_now
            s = sides[i % 2]
            t = time.monotonic()
            try:
                r = await client.post(f"{s['base']}/v1/chat/completions", json=body(i),
                                      headers={"authorization": f"Bearer {s['key']}"})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            dt = time.monotonic() - t
            open_now -= 1
            if ok:
                s["ok"] += 1
                s["lat"].append(dt)
            else:
                s["fail"] += 1

        await sample(0)
        tasks = set()
        i = 0
        next_sample = 60
        while True:
            now = time.monotonic() - t0
            if now >= args.seconds:
                break
            if now >= next_sample:
                await sample(next_sample // 60)
                next_sample += 60
            due = int(now * args.rate)
            while i < due:
                if open_now >= args.in_flight:
                    skipped += 1
                else:
                    open_now += 1
                    task = asyncio.create_task(one(i))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(0.002)
        if tasks:
            await asyncio.gather(*tasks)
        await asyncio.sleep(2)  # the spend writer flushes every 50 ms
        await sample(args.seconds // 60)

        print(f"# {i} requests scheduled at {args.rate:g}/s for {args.seconds} s, {skipped} skipped (in-flight cap)")
        print()
        print("| minute | A: llmgw.db (retention 1m) | A: rows pruned | B: llmgw.db (forever) |")
        print("|---:|---:|---:|---:|")
        for row in samples:
            a, b = row["A"], row["B"]
            print(f"| {row['minute']} | {a['file'] / 1e6:.2f} MB | {a['pruned'] or 0} | {b['file'] / 1e6:.2f} MB |")
        print()
        for s in sides:
            lat = s["lat"]
            print(json.dumps({
                "gateway": s["name"], "ok": s["ok"], "failed": s["fail"],
                "p50_ms": round(quantile(lat, 0.5) * 1000, 2),
                "p99_ms": round(quantile(lat, 0.99) * 1000, 2),
                "dropped_rows": samples[-1][s["name"]]["dropped"],
            }))
        since = int(start_wall) - 1
        for s in sides:
            r = await client.get(f"{s['base']}/spend/report?group_by=key&start={since}",
                                 headers={"authorization": f"Bearer {args.master}"})
            v = r.json()
            got = sum(g.get("requests", 0) for g in v.get("groups", []))
            print(json.dumps({
                "gateway": s["name"], "report_requests": got, "answered_200": s["ok"],
                "matches": got == s["ok"] + s["fail"] and s["fail"] == 0,
                "resolution": v.get("resolution"), "covered_start": v.get("covered_start"),
                "covered_end": v.get("covered_end"),
            }))


if __name__ == "__main__":
    asyncio.run(main())
