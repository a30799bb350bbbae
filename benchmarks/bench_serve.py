"""Load test of `spul serve` on loopback: N concurrent clients for T seconds, a prompt reload half-way.

    python benchmarks/bench_serve.py --tiny                          # tiny random model (seconds, no files)
    python benchmarks/bench_serve.py --tiny --clients 200 --seconds 30   # the bounded load test
    python benchmarks/bench_serve.py --prompt runs/sst2/prompt --reload-prompt runs/sst2/prompt2 \
        --clients 16 --seconds 30 --out runs/bench/serve.json

Starts `spul serve` in a subprocess on 127.0.0.1 (a random port and token), runs the clients (httpx,
asyncio) and reports throughput, p50/p99 latency, errors and lost requests (sent but never answered
with a 200), which prompt answered how many requests around the reload (sent with the admin token),
and the server's resident memory (ready, peak, end). Bounded: at most 512 clients and 600 seconds;
the server binds to loopback only. Exits 1 unless there were 0 errors and 0 lost requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from common import bench_texts, machine, report

MAX_CLIENTS, MAX_SECONDS = 512, 600


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_prompts(folder: Path) -> tuple[Path, Path]:
    """The tests' tiny random model saved in `folder`, and two prompts trained over it (a second each)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_lm, toy_data

    from spul.models import load_model
    from spul.pipeline import train_artifact
    from spul.training import TrainConfig

    lm = make_tiny_lm()
    lm.model.save_pretrained(folder / "model")
    lm.tokenizer.save_pretrained(folder / "model")
    for name, lr in (("a", 1e-2), ("b", 2e-1)):
        train_artifact(
            "spul",
            load_model(str(folder / "model"), device="cpu", precision="fp32"),
            toy_data(),
            folder / name,
            method_options={"num_virtual_tokens": 4},
            config=TrainConfig(epochs=1, batch_size=8, lr=lr),
            show_progress=False,
        )
    return folder / "a", folder / "b"


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc; nan elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def start_server(args, prompt: Path, port: int, token: str, admin: str, log: Path) -> subprocess.Popen:
    """`spul serve` in a subprocess, its output in `log`."""
    command = [sys.executable, "-m", "spul", "serve", "--prompt", str(prompt), "--port", str(port)]
    command += [
        "--host",
        "127.0.0.1",
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    command += ["--max-texts", str(max(64, args.texts_per_request)), "--log-level", "warning"]
    command += ["--precision", args.precision] + (["--device", args.device] if args.device else [])
    command += ["--model", args.model] if args.model else []
    env = os.environ | {"SPUL_API_TOKEN": token, "SPUL_ADMIN_TOKEN": admin}
    handle = open(log, "w")  # the child keeps it open; ours closes when the script ends
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)


async def wait_ready(base: str, server: subprocess.Popen, log: Path, timeout: float) -> float:
    """Seconds until /readyz answers 200 (SystemExit with the server's output if it dies)."""
    start = time.monotonic()
    async with httpx.AsyncClient() as client:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server stopped (exit {server.returncode}):\n{log.read_text()}")
            try:
                if (await client.get(f"{base}/readyz", timeout=2)).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            if time.monotonic() - start > timeout:
                raise SystemExit(f"the server did not get ready in {timeout:.0f} s:\n{log.read_text()}")
            await asyncio.sleep(0.2)


async def load(args, base: str, tokens: tuple[str, str], texts: list[str], reload_prompt, pid: int) -> dict:
    """Run the clients, reload the prompt half-way; latencies, errors, which prompt answered, memory."""
    token, admin = tokens
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    answered_by: Counter[str] = Counter()
    sent = [0]
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=args.timeout
    ) as client:
        start = time.monotonic()
        deadline = start + args.seconds

        async def one_client(k: int) -> None:
            i = k
            while time.monotonic() < deadline:
                batch = [texts[(i + j) % len(texts)] for j in range(args.texts_per_request)]
                i += args.clients
                sent[0] += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post("/v1/classify", json={"texts": batch})
                except httpx.HTTPError as err:
                    errors[type(err).__name__] += 1
                    continue
                if response.status_code != 200:
                    errors[f"HTTP {response.status_code}"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                answered_by[response.json()["prompt"]["fingerprint"]] += 1

        async def reload_half_way() -> dict:
            await asyncio.sleep(args.seconds / 2)
            at = time.monotonic() - start
            t0 = time.perf_counter()
            body = {"prompt": reload_prompt} if reload_prompt else {}
            response = await client.post(
                "/v1/admin/reload", json=body, headers={"Authorization": f"Bearer {admin}"}
            )
            result = {"at_s": round(at, 2), "took_ms": round(1000 * (time.perf_counter() - t0), 1)}
            result["status"] = response.status_code
            if response.status_code == 200:
                swap = response.json()
                result["from"], result["to"] = swap["previous"]["fingerprint"], swap["current"]["fingerprint"]
            else:
                result["detail"] = response.text[:300]
            return result

        memory = [rss_mb(pid)]

        async def watch_memory() -> None:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                memory.append(rss_mb(pid))

        tasks = [one_client(k) for k in range(args.clients)]
        reload_task = reload_half_way() if not args.no_reload else asyncio.sleep(0, result=None)
        *_, reloaded = await asyncio.gather(*tasks, watch_memory(), reload_task)
        wall = time.monotonic() - start
        memory.append(rss_mb(pid))
        metrics = (await client.get("/metrics")).text
    ok = len(latencies)
    ms = sorted(1000 * x for x in latencies)
    batches = _metric(metrics, "spul_batch_texts_count"), _metric(metrics, "spul_batch_texts_sum")
    return {
        "requests_sent": sent[0],
        "requests_ok": ok,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "lost": sent[0] - ok,
        "wall_s": round(wall, 2),
        "throughput_rps": round(ok / wall, 1),
        "throughput_texts_per_s": round(ok * args.texts_per_request / wall, 1),
        "latency_ms": {
            "p50": round(_quantile(ms, 0.50), 1),
            "p99": round(_quantile(ms, 0.99), 1),
            "mean": round(statistics.fmean(ms), 1) if ms else None,
            "max": round(ms[-1], 1) if ms else None,
        },
        "reload": reloaded,
        "rss_mb": {"ready": round(memory[0], 1), "peak": round(max(memory), 1), "end": round(memory[-1], 1)},
        "answered_by_prompt": dict(answered_by),
        "batches": {
            "count": int(batches[0]),
            "mean_texts": round(batches[1] / batches[0], 2) if batches[0] else None,
        },
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile (nan when empty)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))]


def _metric(text: str, name: str) -> float:
    """One unlabelled sample of the Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main() -> None:
    """Start the server, load it, reload half-way, stop it gracefully, print the JSON result."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt", help="saved prompt folder to serve")
    parser.add_argument("--reload-prompt", help="prompt to swap in half-way (default: reload --prompt)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model and two prompts (temp folder)")
    parser.add_argument("--model", help="override the prompt's base model")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout (s)")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--no-reload", action="store_true")
    parser.add_argument("--data-dir", help="shared data folder for SST-2 texts (else synthetic texts)")
    parser.add_argument("--device")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--clients must be 1..{MAX_CLIENTS} and --seconds in (0, {MAX_SECONDS}]")
    if not args.tiny and not args.prompt:
        parser.error("give --prompt (or --tiny)")

    with tempfile.TemporaryDirectory(prefix="spul-bench-serve-") as tmp:
        tmp = Path(tmp)
        if args.tiny:
            prompt, other = tiny_prompts(tmp)
            args.precision = "fp32" if args.precision == "auto" else args.precision
            args.device = args.device or "cpu"
            reload_prompt = str(other)
        else:
            prompt, reload_prompt = Path(args.prompt), args.reload_prompt
        texts, _ = bench_texts(512, args.data_dir)
        port, log = free_port(), tmp / "server.log"
        token, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        server = start_server(args, prompt, port, token, admin, log)
        base = f"http://127.0.0.1:{port}"
        try:
            startup = asyncio.run(wait_ready(base, server, log, args.startup_timeout))
            result = asyncio.run(load(args, base, (token, admin), texts, reload_prompt, server.pid))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                code = server.wait()
        # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean stop
        result = {
            "prompt": str(prompt),
            "reload_prompt": reload_prompt,
            "clients": args.clients,
            "seconds": args.seconds,
            "texts_per_request": args.texts_per_request,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "startup_s": round(startup, 1),
        } | result
        result["server_exit"] = code
        result["server_log_errors"] = [line for line in log.read_text().splitlines() if "ERROR" in line][:5]
        result["machine"] = machine()
    report(result, args.out)
    if result["errors"] or result["lost"] or (result["reload"] or {}).get("status", 200) != 200:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
