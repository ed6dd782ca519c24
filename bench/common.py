"""Shared pieces of the benchmarks: machine description, statistics, result files, synthetic
texts, a lean keep-alive HTTP load generator, and starting/stopping a server subprocess.

The load generator speaks just enough HTTP/1.1 (pre-encoded requests, Content-Length bodies)
to keep the client's own CPU cost small: on a 2-core machine the clients share the cores with
the server under test, and an httpx client would cost more than the request it measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"


# ------------------------------------------------------------------------------ machine, stats


def machine_info(device: str = "cpu") -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": device,
        "load_avg_at_start": list(os.getloadavg()),
        "memory_gib": round(_meminfo_kib("MemTotal") / 2**20, 1),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        info["peft"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _meminfo_kib(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes(pid: int | None = None) -> int:
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(x, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_results(name: str, data: dict, markdown: str, out_dir: Path | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    jp, mp = out_dir / f"{name}.json", out_dir / f"{name}.md"
    jp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    mp.write_text(markdown.rstrip() + "\n")
    return jp, mp


def save_results(name: str, data: dict, markdown: str, out_dir: str | Path | None = None) -> int:
    """Write ``<out>/<name>.{json,md}``, print the markdown and where it went; the exit status."""
    jp, mp = write_results(name, data, markdown, Path(out_dir) if out_dir else None)
    print()
    print(markdown)
    print(f"\nwrote {jp} and {mp}")
    return 0


# ------------------------------------------------------------------------------ synthetic texts

_WORDS = (
    "the a service account card payment transfer refund delivery order booking flight hotel "
    "movie actor plot great terrible boring wonderful slow fast price charge fee balance app "
    "update password login error crash support agent email phone message week today yesterday "
    "never always again please why how when where what could would should help issue problem "
    "working broken late early cheap expensive friendly rude clean dirty quiet loud new old"
).split()


def synthetic_texts(n: int, min_words: int = 4, max_words: int = 40, seed: int = 0) -> list[str]:
    """Deterministic sentences of varied length (a long tail, as user texts are)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = min(max_words, max(min_words, int(rng.lognormvariate(2.4, 0.6))))
        out.append(" ".join(rng.choice(_WORDS) for _ in range(k)).capitalize() + ".")
    return out


# ------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProc:
    proc: subprocess.Popen
    port: int
    log: Path
    name: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_server(name: str, argv: list[str], env: dict, cwd: Path, port: int, log: Path) -> ServerProc:
    full_env = os.environ.copy()
    full_env.update(env)
    full_env.setdefault("PYTHONPATH", str(REPO))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    return ServerProc(proc, port, log, name)


def wait_http(server: ServerProc, path: str, timeout_s: float, want: int = 200) -> float:
    """Poll GET path until it answers `want`; returns the seconds it took."""
    import httpx

    t0 = time.monotonic()
    deadline = t0 + timeout_s
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as c:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
            try:
                if c.get(path).status_code == want:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    raise TimeoutError(f"{server.name}: {path} not {want} after {timeout_s}s:\n{server.tail()}")


# ------------------------------------------------------------------------------ load generator


def encode_request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, body
    return status, await reader.readexactly(length) if length else b""


@dataclass
class LoadResult:
    duration_s: float
    requests: int
    errors: int
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    sample_error: str | None = None

    def summary(self, texts_per_request: int) -> dict:
        rps = self.requests / self.duration_s if self.duration_s else 0.0
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rps": rps,
            "texts_per_s": rps * texts_per_request,
            "p50_ms": percentile(self.latencies_ms, 0.50),
            "p99_ms": percentile(self.latencies_ms, 0.99),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "sample_error": self.sample_error,
        }


async def _load(
    port: int,
    next_request: Callable[[], bytes],
    clients: int,
    duration_s: float,
    warmup_s: float,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    t_measure = t_start + warmup_s
    t_end = t_measure + duration_s
    result = LoadResult(duration_s=duration_s, requests=0, errors=0)

    async def client() -> None:
        reader = writer = None
        try:
            while True:
                now = loop.time()
                if now >= t_end:
                    return
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                req = next_request()
                t0 = loop.time()
                writer.write(req)
                try:
                    status, body = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    writer.close()
                    reader = writer = None
                    status, body = -1, b"connection closed"
                t1 = loop.time()
                if t_measure <= t1 <= t_end:  # completions inside the window (the rate a server sustains)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if status == 200:
                        result.requests += 1
                        result.latencies_ms.append((t1 - t0) * 1000.0)
                    else:
                        result.errors += 1
                        if result.sample_error is None:
                            result.sample_error = f"{status}: {body[:300]!r}"
                elif status != 200 and result.sample_error is None:
                    result.sample_error = f"(warm-up) {status}: {body[:300]!r}"
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return result


def run_load(
    port: int,
    next_request: Callable[[], bytes],
    clients: int,
    duration_s: float,
    warmup_s: float = 1.0,
) -> LoadResult:
    """N keep-alive clients, each sending its next request as soon as the last one answers.

    Requests that complete inside the measured window (after the warm-up) are counted; each
    client finishes its request in flight before returning, so nothing spills into the next run."""
    try:
        import uvloop  # type: ignore[import-not-found]

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_load(port, next_request, clients, duration_s, warmup_s))


async def _fire(port: int, requests: Sequence[bytes], clients: int) -> list[tuple[int, float]]:
    """Send each request once (N connections share the list); (status, seconds) per request."""
    out: list[tuple[int, float]] = [(0, 0.0)] * len(requests)
    it = iter(range(len(requests)))
    loop = asyncio.get_running_loop()

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in it:
                t0 = loop.time()
                writer.write(requests[i])
                status, _ = await _read_response(reader)
                out[i] = (status, loop.time() - t0)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(max(1, min(clients, len(requests))))))
    return out


def fire(port: int, requests: Sequence[bytes], clients: int = 1) -> list[tuple[int, float]]:
    return asyncio.run(_fire(port, requests, clients))
