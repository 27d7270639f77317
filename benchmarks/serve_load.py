"""Load test of ``flexicodec-tts serve`` on loopback: concurrent streaming clients.

Starts the server (``python -m flexicodec.tts.cli serve``, this checkout's code) on 127.0.0.1, fetches
one reference response per distinct request one at a time, then for each ``--clients`` value
runs that many client threads that stream ``POST /v1/audio/speech`` requests (WAV, fixed
seeds) until ``--requests`` have been sent or ``--max-seconds`` have passed. Every request
ends answered (200, its bytes compared with the reference: with a seed the audio is
deterministic, so any difference is corruption), cleanly rejected (503 with
``Retry-After``; the client waits ``min(Retry-After, --backoff)`` before its next request)
or as an error; "lost" counts requests with no outcome. The server's RSS is sampled every
0.25 s. Reports time to first byte / last byte (p50, p95 of answered requests), audio
throughput, and RSS, as ``serve_load.json`` + ``serve_load.md`` under ``--out``.

    python -m flexicodec.benchmarks.serve_load --out bench/ [--clients 2,8] [--requests 40]
        [--workers 2] [--queue-size 4] [--max-seconds 300] [--model DIR]

Only loopback addresses are accepted as targets; the request loop is bounded in count and
time and stops by itself.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from flexicodec.benchmarks.common import hardware_info, log, pick_sentences, write_json
from flexicodec.common.constants import SAMPLE_RATE

REPO = Path(__file__).resolve().parent.parent


def percentile(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def make_requests(n_texts: int, voice: str, seed: int = 0) -> list[dict]:
    """``n_texts`` request bodies: shipped sentences of 4-30 words, fixed seeds, WAV."""
    texts = pick_sentences(n_texts, seed, min_words=4, max_words=30)
    return [{"model": "flexicodec", "input": t, "voice": voice, "seed": seed + i,
             "response_format": "wav"} for i, t in enumerate(texts)]


def fetch(client, url: str, body: dict, timeout: float) -> dict:
    """One streamed request → outcome, timings (s from the start), bytes and digest."""
    t0 = time.perf_counter()
    out = {"status": None, "ttfb_s": None, "ttlb_s": None, "bytes": 0}
    digest = hashlib.sha256()
    try:
        with client.stream("POST", url + "/v1/audio/speech", json=body, timeout=timeout) as r:
            out["status"] = r.status_code
            if r.status_code == 503:
                out["retry_after"] = r.headers.get("retry-after")
            for chunk in r.iter_raw():
                if out["ttfb_s"] is None:
                    out["ttfb_s"] = time.perf_counter() - t0
                digest.update(chunk)
                out["bytes"] += len(chunk)
        out["ttlb_s"] = time.perf_counter() - t0
    except Exception as exc:  # a broken stream is an outcome to count, not to hide
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["sha256"] = digest.hexdigest()
    return out


def classify(res: dict, reference: dict[int, str]) -> str:
    if "error" in res:
        return "error"
    if res["status"] == 503:
        return "rejected" if res.get("retry_after") else "error"
    if res["status"] != 200:
        return "error"
    return "ok" if res["sha256"] == reference[res["index"]] else "corrupted"


def run_phase(url: str, requests: list[dict], reference: dict[int, str], clients: int,
              total: int, max_seconds: float, backoff: float = 1.0,
              timeout: float = 120.0) -> dict:
    """``clients`` threads send ``total`` requests (cycling through ``requests``) within
    ``max_seconds``; returns counts, percentiles and every result."""
    import httpx

    lock = threading.Lock()
    issued = [0]
    results: list[dict] = []
    deadline = time.monotonic() + max_seconds

    def client_loop():
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                with lock:
                    if issued[0] >= total:
                        return
                    k = issued[0]
                    issued[0] += 1
                res = fetch(client, url, requests[k % len(requests)], timeout)
                res["index"] = k % len(requests)
                with lock:
                    results.append(res)
                if res["status"] == 503:
                    time.sleep(min(float(res.get("retry_after") or backoff), backoff))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + timeout + 30)
    wall = time.perf_counter() - t0
    counts = {"issued": issued[0], "ok": 0, "rejected": 0, "corrupted": 0, "error": 0}
    for res in results:
        res["outcome"] = classify(res, reference)
        counts[res["outcome"]] += 1
    counts["lost"] = counts["issued"] - len(results)
    ok = [r for r in results if r["outcome"] == "ok"]
    audio_s = sum((r["bytes"] - 44) / 2 / SAMPLE_RATE for r in ok)
    return {"clients": clients, "wall_s": wall, **counts,
            "ttfb_p50_s": percentile([r["ttfb_s"] for r in ok], 50),
            "ttfb_p95_s": percentile([r["ttfb_s"] for r in ok], 95),
            "ttlb_p50_s": percentile([r["ttlb_s"] for r in ok], 50),
            "ttlb_p95_s": percentile([r["ttlb_s"] for r in ok], 95),
            "audio_s": audio_s, "audio_s_per_s": audio_s / wall if wall else None,
            "errors": sorted({r.get("error", str(r["status"])) for r in results
                              if r["outcome"] == "error"}),
            "results": results}


def reference_digests(url: str, requests: list[dict], timeout: float = 300.0) -> dict[int, str]:
    """Each request's body digest, fetched one at a time (nothing else running)."""
    import httpx

    ref = {}
    with httpx.Client() as client:
        for i, body in enumerate(requests):
            res = fetch(client, url, body, timeout)
            if res["status"] != 200 or "error" in res:
                raise RuntimeError(f"reference request {i} failed: {res}")
            ref[i] = res["sha256"]
    return ref


class RssSampler:
    """Samples a process's resident memory every ``every`` seconds in a thread."""

    def __init__(self, read_rss: Callable[[], int], every: float = 0.25):
        self.read_rss, self.every = read_rss, every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, self.read_rss()))
            self._stop.wait(self.every)

    def now_mb(self) -> float:
        return self.read_rss() / 2**20

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(host: str, port: int, model: str | None, workers: int, queue_size: int,
                 voices: str, log_path: Path, startup_s: float = 180.0) -> subprocess.Popen:
    """``python -m flexicodec.tts.cli serve`` from this checkout; returns once /health answers."""
    import httpx

    cmd = [sys.executable, "-m", "flexicodec.tts.cli", "serve", "--host", host, "--port", str(port),
           "--workers", str(workers), "--queue-size", str(queue_size), "--voices", voices]
    if model:
        cmd += ["--model", model]
    env = {k: v for k, v in os.environ.items() if k != "FLEXICODEC_API_KEY"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while time.monotonic() - t0 < startup_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://{host}:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not answer /health within {startup_s:.0f} s")


def to_markdown(result: dict) -> str:
    """The phases as a markdown table, after a line on the setup and the server's memory."""
    c, m = result["config"], result["rss_mb"]
    lines = [f"Server: {c['workers']} worker(s), queue {c['queue_size']}, "
             f"{c['model'] or 'the shipped models'}, voice {c['voice']}; "
             f"{c['distinct_requests']} distinct requests (WAV, fixed seeds), "
             f"{c['requests_per_phase']} per phase. Server RSS {m['after_reference']:.0f} MiB "
             f"after the reference pass, peak {m['peak']:.0f} MiB, {m['end']:.0f} MiB at the "
             f"end.", "",
             "| clients | requests | answered | rejected (503) | corrupted | errors | lost | "
             "TTFB p50 / p95 (s) | TTLB p50 / p95 (s) | audio s per s | RSS after (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(x, nd=2):
        return "-" if x is None else f"{x:.{nd}f}"
    for p in result["phases"]:
        lines.append(f"| {p['clients']} | {p['issued']} | {p['ok']} | {p['rejected']} | "
                     f"{p['corrupted']} | {p['error']} | {p['lost']} | "
                     f"{f(p['ttfb_p50_s'])} / {f(p['ttfb_p95_s'])} | "
                     f"{f(p['ttlb_p50_s'])} / {f(p['ttlb_p95_s'])} | "
                     f"{f(p['audio_s_per_s'])} | {f(p['rss_end_mb'], 0)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from flexicodec.tts.server import is_loopback

    ap = argparse.ArgumentParser(prog="python -m flexicodec.benchmarks.serve_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", required=True, help="output directory")
    ap.add_argument("--host", default="127.0.0.1", help="a loopback address")
    ap.add_argument("--model", help="model directory (default: the shipped models)")
    ap.add_argument("--clients", default="2,8",
                    help="comma-separated concurrent client counts, one phase each")
    ap.add_argument("--requests", type=int, default=40, help="requests per phase")
    ap.add_argument("--distinct", type=int, default=8, help="distinct request bodies")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue-size", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time limit per phase")
    ap.add_argument("--backoff", type=float, default=1.0,
                    help="longest wait after a 503 (the server's Retry-After, capped)")
    ap.add_argument("--voice", default="flite_slt")
    a = ap.parse_args(argv)
    if not is_loopback(a.host):
        ap.error(f"--host {a.host} is not a loopback address; the load test only targets "
                 f"this machine")
    clients = [int(x) for x in a.clients.split(",") if x.strip()]
    if not clients or min(clients) < 1 or a.requests < 1 or a.distinct < 1:
        ap.error("--clients, --requests and --distinct must be positive")
    import psutil

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port(a.host)
    host = f"[{a.host}]" if ":" in a.host else a.host
    url = f"http://{host}:{port}"
    requests = make_requests(a.distinct, a.voice)
    with tempfile.TemporaryDirectory() as voices:
        log(f"starting the server on {url} ({a.workers} workers, queue {a.queue_size})")
        proc = start_server(a.host, port, a.model, a.workers, a.queue_size, voices,
                            out / "serve_load_server.log")
        try:
            ps = psutil.Process(proc.pid)
            with RssSampler(lambda: ps.memory_info().rss) as rss:
                rss_start = rss.now_mb()
                log(f"reference pass: {len(requests)} requests one at a time")
                reference = reference_digests(url, requests)
                rss_ref = rss.now_mb()
                phases = []
                for n in clients:
                    log(f"phase: {n} clients, {a.requests} requests, <= {a.max_seconds:.0f} s")
                    ph = run_phase(url, requests, reference, n, a.requests, a.max_seconds,
                                   a.backoff)
                    ph["rss_end_mb"] = rss.now_mb()
                    phases.append(ph)
                    log(f"  ok {ph['ok']}, rejected {ph['rejected']}, corrupted "
                        f"{ph['corrupted']}, errors {ph['error']}, lost {ph['lost']}")
            samples = rss.samples
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = {
        "config": {"host": a.host, "workers": a.workers, "queue_size": a.queue_size,
                   "model": a.model, "requests_per_phase": a.requests,
                   "distinct_requests": len(requests), "max_seconds": a.max_seconds,
                   "voice": a.voice, "backoff_s": a.backoff},
        "hardware": hardware_info("cpu"),
        "rss_mb": {"start": rss_start, "after_reference": rss_ref,
                   "peak": max(s[1] for s in samples) / 2**20, "end": samples[-1][1] / 2**20},
        "rss_samples_mb": [(round(t, 2), round(b / 2**20, 1)) for t, b in samples],
        "phases": phases,
    }
    write_json(out / "serve_load.json", result)
    md = to_markdown(result)
    from flexicodec.common.atomic import atomic_write_text
    atomic_write_text(out / "serve_load.md", md)
    print(md)
    bad = sum(p["corrupted"] + p["error"] + p["lost"] for p in phases)
    print(json.dumps({"answered": sum(p["ok"] for p in phases),
                      "rejected": sum(p["rejected"] for p in phases), "bad": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
