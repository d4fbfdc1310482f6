#!/usr/bin/env python3
"""A bounded load test for an OpenAI-compatible server (specrun serve, llama-server).

For each concurrency C, C clients send streamed chat completions (greedy) for the prompts of a
JSON Lines file, each prompt once per level, and the script reports per level: aggregate
completion tok/s (all tokens / wall time), p50/p95 time to first token, p50/p95 inter-token
latency (per request: (t_last - t_first) / (tokens - 1)), p95/max of each request's longest
wait between two streamed chunks (a stream stalled while the server read another request's
prompt shows here), and the requests that failed.

Only the standard library (threads and http.client), so it runs anywhere Python does.

Usage: serve_load.py URL [--concurrency 1,4,8] [--prompts docs/bench/batch32.jsonl]
                         [--requests N] [--max-tokens 64] [--label NAME] [--api-key KEY]
                         [--nonce request|level]
Prints one Markdown table row per level (with --header, the header first).
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(url, messages, max_tokens, api_key, timeout):
    """One streamed chat completion: (tokens, ttft, itl, longest gap) or raises."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    body = json.dumps(
        {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    t0 = time.perf_counter()
    conn.request("POST", u.path.rstrip("/") + "/chat/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    t_first = t_last = None
    gap = 0.0
    tokens = None
    n_chunks = 0
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if ev.get("usage"):
            tokens = ev["usage"].get("completion_tokens", tokens)
        for c in ev.get("choices") or []:
            if (c.get("delta") or {}).get("content"):
                now = time.perf_counter()
                if t_last is not None:
                    gap = max(gap, now - t_last)
                t_first = t_first or now
                t_last = now
                n_chunks += 1
    conn.close()
    if t_first is None:
        raise RuntimeError("no content")
    if tokens is None:
        tokens = n_chunks  # a server without usage in streams: one token per chunk
    itl = (t_last - t_first) / (tokens - 1) if tokens > 1 else 0.0
    return tokens, t_first - t0, itl, gap


def level(url, prompts, concurrency, max_tokens, api_key, timeout, nonce_per="request"):
    # a unique first line, so that no server answers from a prompt cache filled by an earlier
    # level (every level sends the same prompts): per request (no two requests share a
    # prefix), or per level (requests that repeat a prompt or share a system prompt inside the
    # level do, as a prefix cache would see them in use)
    nonce = time.time_ns()
    todo = []
    for i, messages in enumerate(prompts):
        m = [dict(x) for x in messages]
        tag = f"[request {nonce}-{i}]" if nonce_per == "request" else f"[run {nonce}]"
        m[0]["content"] = tag + "\n" + m[0]["content"]
        todo.append(m)
    lock = threading.Lock()
    results, failures = [], []

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                messages = todo.pop(0)
            try:
                r = one_request(url, messages, max_tokens, api_key, timeout)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - reported, never fatal
                with lock:
                    failures.append(str(e))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(r[0] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "failed": len(failures),
        "tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50": percentile([r[1] for r in results], 0.5),
        "ttft_p95": percentile([r[1] for r in results], 0.95),
        "itl_p50": percentile([r[2] for r in results], 0.5),
        "itl_p95": percentile([r[2] for r in results], 0.95),
        "gap_p95": percentile([r[3] for r in results], 0.95),
        "gap_max": max([r[3] for r in results], default=float("nan")),
        "errors": failures[:3],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", help="base URL, e.g. http://127.0.0.1:8080/v1")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--prompts", default="docs/bench/batch32.jsonl")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (the first N prompts)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--label", default="server")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--header", action="store_true")
    ap.add_argument("--json", action="store_true", help="JSON lines instead of Markdown rows")
    ap.add_argument("--nonce", choices=["request", "level"], default="request",
                    help="a unique first line per request (no shared prefixes) or per level (repeats and shared system prompts stay shared)")
    a = ap.parse_args()
    prompts = []
    with open(a.prompts, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                prompts.append(r["messages"] if "messages" in r else [{"role": "user", "content": r["prompt"]}])
    prompts = prompts[: a.requests]
    if a.header and not a.json:
        print("| server | clients | requests | tok/s | TTFT p50 / p95 (s) | ITL p50 / p95 (ms) | longest gap p95 / max (s) | failed |")
        print("|---|---|---|---|---|---|---|---|")
    for c in [int(x) for x in a.concurrency.split(",")]:
        r = level(a.url, prompts, c, a.max_tokens, a.api_key, a.timeout, a.nonce)
        r["label"] = a.label
        if a.json:
            print(json.dumps(r), flush=True)
        else:
            print(
                f"| {a.label} | {c} | {r['requests']} | {r['tok_s']:.2f} | {r['ttft_p50']:.2f} / {r['ttft_p95']:.2f} | "
                f"{1000 * r['itl_p50']:.0f} / {1000 * r['itl_p95']:.0f} | {r['gap_p95']:.2f} / {r['gap_max']:.2f} | {r['failed']} |",
                flush=True,
            )
        if r["errors"]:
            print("errors: " + "; ".join(r["errors"]), file=sys.stderr)


if __name__ == "__main__":
    main()
