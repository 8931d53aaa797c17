"""Benchmark: HTTP serving under concurrent load, dynamic batching against one image per forward.

Starts the server (``taxonomist.cli.serve.serve`` under uvicorn, in a subprocess on loopback) twice on
the same checkpoint: with dynamic batching (``--max-batch-size``, ``--max-wait-ms``) and with
``max_batch_size=1``. Each time ``--clients`` concurrent clients (asyncio + httpx) post one image per
request for ``--seconds``, cycling through the images of ``--images``. Reports images/s, p50/p95/p99
latency, errors and the server's batch size distribution (read from its ``/metrics``).

The category only selects output masks, so every request uses one category (the checkpoint's first
unless ``--category``): the cost is the same for all.

Writes ``benchmarks/results/serve.json`` and the "Serving" section of ``docs/benchmarks.md``.
Usage: ``python benchmarks/serve_load.py --checkpoint runs/fpi [--clients 16] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
from common import machine, replace_section
from prometheus_client.parser import text_string_to_metric_families

from taxonomist.data.catalog import expand_path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
DOCS = ROOT / "docs" / "benchmarks.md"
HEADING = "## Serving (dynamic batching)"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
SERVER = "import typer; from taxonomist.cli.serve import serve; typer.run(serve)"


def load_images(folder: Path, limit: int) -> list[tuple[str, bytes]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return [(p.name, p.read_bytes()) for p in paths]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    checkpoint: Path, port: int, max_batch_size: int, max_wait_ms: float, extra: Sequence[str] = ()
) -> subprocess.Popen:
    """``extra``: more ``taxonomist serve`` flags (e.g. ``--runtime openvino``)."""
    cmd = [sys.executable, "-c", SERVER, str(checkpoint), "--port", str(port), "--log-level", "warning"]
    cmd += ["--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready within 180 s")


def batch_histogram(metrics_text: str) -> tuple[dict[str, float], float, float]:
    """(cumulative bucket counts by upper bound, count, sum) of the server's batch size histogram."""
    buckets, count, total = {}, 0.0, 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "taxonomist_batch_size":
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                buckets[s.labels["le"]] = s.value
            elif s.name.endswith("_count"):
                count = s.value
            elif s.name.endswith("_sum"):
                total = s.value
    return buckets, count, total


async def drive(
    base: str, images: list[tuple[str, bytes]], category: str, clients: int, seconds: float
) -> tuple[list[float], int]:
    """``clients`` closed loops for ``seconds``: (latencies of successful requests in s, errors)."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient, start: int) -> None:
        nonlocal errors
        k = start
        while time.perf_counter() < stop_at:
            name, data = images[k % len(images)]
            k += clients
            t0 = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/predict", files=[("image", (name, data, "image/jpeg"))], data={"category": category}
                )
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(http, i) for i in range(clients)))
    return latencies, errors


def measure(
    proc: subprocess.Popen,
    base: str,
    images: list[tuple[str, bytes]],
    category: str,
    clients: int,
    seconds: float,
) -> tuple[list[float], int, float, tuple, tuple]:
    """Warm up, then drive ``clients`` for ``seconds``: (latencies, errors, elapsed seconds, batch histogram
    before, after). The server is stopped whatever happens."""
    try:
        asyncio.run(drive(base, images, category, clients, min(2.0, seconds)))  # warm-up
        before = batch_histogram(httpx.get(f"{base}/metrics", timeout=30).text)
        start = time.perf_counter()
        latencies, errors = asyncio.run(drive(base, images, category, clients, seconds))
        elapsed = time.perf_counter() - start
        after = batch_histogram(httpx.get(f"{base}/metrics", timeout=30).text)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return latencies, errors, elapsed, before, after


def run_once(
    args: argparse.Namespace, images: list[tuple[str, bytes]], category: str, max_batch_size: int
) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args.checkpoint, port, max_batch_size, args.max_wait_ms)
    latencies, errors, elapsed, before, after = measure(
        proc, base, images, category, args.clients, args.seconds
    )
    sizes, previous = {}, 0.0
    for le, count in after[0].items():  # cumulative buckets → batches with size in (previous bound, le]
        cumulative = count - before[0].get(le, 0.0)
        if cumulative > previous:
            sizes[f"<={float(le):g}"] = int(cumulative - previous)
        previous = cumulative
    batches, batched_images = after[1] - before[1], after[2] - before[2]
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "max_batch_size": max_batch_size,
        "max_wait_ms": args.max_wait_ms if max_batch_size > 1 else 0.0,
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "images_per_s": len(latencies) / elapsed,
        "latency_ms": {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)},
        "batches": batches,
        "mean_batch_size": batched_images / batches if batches else 0.0,
        "batch_sizes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--images", default="{data_dir}/fashion-product-images/images")
    parser.add_argument("--max-images", type=int, default=512, help="Distinct images to cycle through.")
    parser.add_argument(
        "--category", help="Category sent with every image (default: the checkpoint's first)."
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--output", type=Path, default=RESULTS, help="Results JSON.")
    parser.add_argument(
        "--docs", type=Path, default=DOCS, help="Docs page whose Serving section is replaced."
    )
    args = parser.parse_args()

    images = load_images(expand_path(args.images), args.max_images)
    meta = json.loads((args.checkpoint / "taxonomist.json").read_text(encoding="utf-8"))
    category = args.category or meta["categories"][0]
    runs = {}
    for label, size in (("dynamic", args.max_batch_size), ("batch1", 1)):
        runs[label] = run_once(args, images, category, size)
        print(label, json.dumps(runs[label]), flush=True)
    out = {
        "checkpoint": str(args.checkpoint),
        "backbone": meta["backbone"]["name"],
        "clients": args.clients,
        "seconds": args.seconds,
        "distinct_images": len(images),
        "runs": runs,
        "dynamic_vs_batch1": runs["dynamic"]["images_per_s"] / runs["batch1"]["images_per_s"],
        "machine": machine(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1), encoding="utf-8")
    replace_section(args.docs, HEADING, docs_section(out))
    print(f"dynamic vs batch 1: {out['dynamic_vs_batch1']:.2f}x · {args.output}")


def docs_section(r: dict) -> str:
    rows = []
    for label, run in r["runs"].items():
        name = (
            f"dynamic batching (max {run['max_batch_size']}, wait {run['max_wait_ms']:g} ms)"
            if label == "dynamic"
            else "one image per forward (max_batch_size 1)"
        )
        lat = run["latency_ms"]
        sizes = ", ".join(f"{k}: {v}" for k, v in run["batch_sizes"].items())
        rows.append(
            f"| {name} | {run['images_per_s']:.1f} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
            f"{lat['p99']:.0f} | {run['errors']} | {run['mean_batch_size']:.1f} | {sizes} |"
        )
    return "\n".join(
        [
            HEADING,
            "",
            f"`python benchmarks/serve_load.py --clients {r['clients']} --seconds {r['seconds']:g}` on "
            f"{r['machine']}; results in `benchmarks/results/serve.json`. One uvicorn process serving "
            f"`{r['backbone']}` heads; {r['clients']} concurrent clients on loopback (same machine, so they "
            f"share its CPU), each posting one image per request, cycling through {r['distinct_images']} "
            "images; a warm-up precedes each timed window.",
            "",
            "| server | images/s | p50 ms | p95 ms | p99 ms | errors | mean batch | batches by size |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            *rows,
            "",
            f"Dynamic batching vs one image per forward: {r['dynamic_vs_batch1']:.2f}× throughput.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
