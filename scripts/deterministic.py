#!/usr/bin/env python3
"""Batch invariance, measured: `--deterministic` against the default mode on the fidelity
prompts and an evaluation set, as batch runs (target-only sequential, speculative sequential,
speculative with --parallel 4), plus identical requests to `specrun serve` from 4 and 16
concurrent clients. Greedy throughout.

Usage: scripts/deterministic.py [--bin SPECRUN] [--threads 2] [--tokens 64] [--skip-serve]
                               [--modes default,deterministic] [--sets A.jsonl,B.jsonl]
                               [--skip-sequential]
Prints, per mode: records identical to target-only, decode tok/s of each run, and for serve how
many distinct answers the concurrent identical requests got.
"""
import argparse, json, os, socket, subprocess, sys, tempfile, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS = ["docs/bench/prompts-fidelity.jsonl", "docs/bench/eval-open.jsonl", "docs/bench/eval-grounded.jsonl"]


def records(tokens, sets):
    out = []
    for path in sets:
        for line in open(os.path.join(ROOT, path)):
            if line.strip():
                r = json.loads(line)
                r["max_tokens"] = tokens
                r["id"] = f"{os.path.basename(path).split('.')[0]}/{r['id']}"
                out.append(r)
    return out


def batch(bin, inp, extra, threads):
    out = tempfile.mktemp(suffix=".jsonl")
    t0 = time.time()
    subprocess.run([bin, "batch", inp, "-o", out, "-t", str(threads), "--quiet"] + extra, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    texts, tokens, decode_s = {}, 0, 0.0
    for line in open(out):
        r = json.loads(line)
        if "id" in r and "text" in r:
            texts[r["id"]] = r["text"]
            tokens += r.get("n_generated", 0)
            if r.get("decode_tok_per_s"):
                decode_s += r["n_generated"] / r["decode_tok_per_s"]
    os.unlink(out)
    return texts, tokens, wall, tokens / decode_s if decode_s else float("nan")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve_distinct(bin, extra, threads, clients, prompt, tokens):
    port = free_port()
    p = subprocess.Popen([bin, "serve", "--port", str(port), "--parallel", "4", "-t", str(threads)] + extra,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": tokens, "temperature": 0}).encode()

        def ask(_):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body, {"Content-Type": "application/json"})
            return json.load(urllib.request.urlopen(req, timeout=600))["choices"][0]["message"]["content"]

        alone = ask(0)
        with ThreadPoolExecutor(clients) as ex:
            answers = list(ex.map(ask, range(clients)))
        return 1 + sum(a != alone for a in answers), len(set(answers + [alone]))
    finally:
        p.terminate()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.environ.get("SPECRUN_BIN", os.path.join(ROOT, "target/release/specrun")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--modes", default="default,deterministic", help="which of default, deterministic to run")
    ap.add_argument("--sets", default=",".join(SETS), help="prompt files (comma-separated)")
    ap.add_argument("--skip-sequential", action="store_true", help="speculative batches with --parallel 4 only")
    a = ap.parse_args()
    sets = a.sets.split(",")
    recs = records(a.tokens, sets)
    inp = tempfile.mktemp(suffix=".jsonl")
    with open(inp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    print(f"{len(recs)} records ({', '.join(sets)}), {a.tokens} tokens, greedy, {a.threads} threads", flush=True)
    for mode, flags in (("default", []), ("deterministic", ["--deterministic"])):
        if mode not in a.modes.split(","):
            continue
        plain, pt, pw, pd = batch(a.bin, inp, flags + ["--no-draft", "--temp", "0"], a.threads)
        print(f"{mode:13s} target-only       {pt / pw:6.2f} tok/s overall, {pd:6.2f} decoding ({pt} tokens, {pw:.1f} s)", flush=True)
        for name, extra in (("speculative", []), ("speculative -np 4", ["--parallel", "4"])):
            if a.skip_sequential and "--parallel" not in extra:
                continue
            spec, st, sw, sd = batch(a.bin, inp, flags + ["--temp", "0"] + extra, a.threads)
            same = sum(spec.get(k) == v for k, v in plain.items())
            print(f"{mode:13s} {name:17s} {st / sw:6.2f} tok/s overall, {sd:6.2f} decoding; identical to target-only: {same}/{len(plain)}", flush=True)
        if not a.skip_serve:
            prompt = "Write a Rust function that returns the n-th prime number."
            for clients in (4, 16):
                differ, distinct = serve_distinct(a.bin, flags, a.threads, clients, prompt, 24)
                print(f"{mode:13s} serve, {clients:2d} concurrent identical requests: {distinct} distinct answer(s)", flush=True)
    os.unlink(inp)


if __name__ == "__main__":
    main()
