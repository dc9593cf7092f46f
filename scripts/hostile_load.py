#!/usr/bin/env python3
"""Hostile traffic for `scripts/bench.sh --hostile`: runs beside wrk's normal load.

Sends, at a fixed total rate, an even mix of three kinds of hostile request to the
gateway (issue 9, acceptance 4):

  fallbacks  a chat request with a 100,000-name `fallbacks` list and `timeout: 1e-9`
  huge       an ~8 MB prompt (just under the default body limit) to a model group with a `context_window` set
  slow       a request whose body trickles in (a few bytes a second) and is never finished

Each request runs as its own asyncio task on a raw socket, so slow ones cost no thread.
Prints one machine-readable line at the end:

  HOSTILE sent=N fallbacks=N huge=N slow=N answered=N status_4xx=N status_5xx=N closed=N still_open=N

(closed: the gateway closed the connection without an answer; still_open: cancelled by us
at the end of --drain.)

Standard library only; bounded: stops sending after --duration seconds and gives the
tasks still open at most --drain seconds before it cancels them.
"""

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

FALLBACK_NAMES = 100_000
# Just under the gateway's default 8 MiB body limit, so the prompt reaches token counting.
HUGE_BYTES = 8 * 1024 * 1024 - 64 * 1024
SLOW_DECLARED = 64 * 1024  # Content-Length the slow body promises
SLOW_STEP = 16  # bytes per trickle
SLOW_EVERY = 1.0  # seconds between trickles


def request_head(host, port, length, key):
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def bodies(model):
    names = [f"no-such-group-{i}" for i in range(FALLBACK_NAMES)]
    fallbacks = json.dumps(
        {
            "model": model,
            "timeout": 1e-9,
            "fallbacks": names,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    filler = "lorem ipsum dolor sit amet " * (HUGE_BYTES // 27)
    huge = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": filler}]}
    ).encode()
    return fallbacks, huge


async def read_status(reader):
    """The status code of the answer, or None when the gateway closed without one."""
    try:
        line = await reader.readline()
    except (ConnectionError, OSError):
        return None
    parts = line.split()
    if len(parts) >= 2 and parts[1].isdigit():
        # Drain the rest so the gateway is not left writing to a full socket.
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass
        return int(parts[1])
    return None


async def send_whole(host, port, key, body, stats):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["closed"] += 1
        return
    try:
        writer.write(request_head(host, port, len(body), key) + body)
        await writer.drain()
        status = await read_status(reader)
    except (ConnectionError, OSError):
        status = None
    finally:
        writer.close()
    record(stats, status)


async def send_slow(host, port, key, stats, stop_at):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["closed"] += 1
        return
    status = None
    try:
        writer.write(request_head(host, port, SLOW_DECLARED, key) + b'{"model":')
        await writer.drain()
        read = asyncio.ensure_future(read_status(reader))
        sent = 0
        while not read.done() and sent < SLOW_DECLARED - SLOW_STEP and time.monotonic() < stop_at:
            await asyncio.wait([read], timeout=SLOW_EVERY)
            if read.done():
                break
            writer.write(b" " * SLOW_STEP)
            await writer.drain()
            sent += SLOW_STEP
        if read.done():
            status = read.result()
        else:
            read.cancel()
    except (ConnectionError, OSError):
        status = None
    finally:
        writer.close()
    record(stats, status)


def record(stats, status):
    if status is None:
        stats["closed"] += 1
    else:
        stats["answered"] += 1
        if 400 <= status < 500:
            stats["status_4xx"] += 1
        elif status >= 500:
            stats["status_5xx"] += 1


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="the gateway, e.g. http://127.0.0.1:4000")
    ap.add_argument("--model", required=True)
    ap.add_argument("--rate", type=float, required=True, help="hostile requests per second")
    ap.add_argument("--duration", type=float, required=True, help="seconds of sending")
    ap.add_argument("--drain", type=float, default=5.0)
    ap.add_argument("--key", default="")
    ap.add_argument("--kinds", default="fallbacks,huge,slow", help="comma-separated subset")
    args = ap.parse_args()
    if not (0 < args.rate <= 10_000) or not (0 < args.duration <= 3600):
        sys.exit("hostile_load.py: --rate must be in (0, 10000] and --duration in (0, 3600]")

    u = urlsplit(args.url)
    host, port = u.hostname, u.port or 80
    fallbacks, huge = bodies(args.model)
    stats = dict(sent=0, fallbacks=0, huge=0, slow=0, answered=0, status_4xx=0, status_5xx=0, closed=0, still_open=0)
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in ("fallbacks", "huge", "slow") for k in kinds):
        sys.exit("hostile_load.py: --kinds takes fallbacks, huge and slow")
    tasks = set()
    start = time.monotonic()
    stop_at = start + args.duration
    i = 0
    while True:
        due = start + i / args.rate
        if due >= stop_at:
            break
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        kind = kinds[i % len(kinds)]
        if kind == "fallbacks":
            t = send_whole(host, port, args.key, fallbacks, stats)
        elif kind == "huge":
            t = send_whole(host, port, args.key, huge, stats)
        else:
            t = send_slow(host, port, args.key, stats, stop_at)
        task = asyncio.ensure_future(t)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        stats["sent"] += 1
        stats[kind] += 1
        i += 1
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=args.drain)
        for task in pending:
            task.cancel()
            stats["still_open"] += 1
    print("HOSTILE " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
