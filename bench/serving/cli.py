"""`python -m bench.serving`: set up the store and the servers, measure, write the tables."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    REPO,
    ServerProc,
    fmt,
    free_port,
    machine_info,
    ratio,
    rss_bytes,
    run_load,
    save_results,
    start_server,
    wait_http,
)
from bench.serving import __doc__ as SERVING_DOC
from bench.serving.load import (
    MIXES,
    Config,
    Mix,
    batch_stats,
    cold_phase,
    make_bodies,
    memory_phase,
    request_factory,
    version_phase,
    warm,
)
from bench.serving.report import aggregate, render_markdown
from bench.serving.store import build_store, device_bytes, task_name

#: peer servers besides PEFT prefix tuning (`--peft`): bare models serving one task, and LoRA
PEERS = ("hf", "ort-fp32", "ort-int8", "lora")
BARE_PEERS = ("hf", "ort-fp32", "ort-int8")
PEER_ENGINE = {"peft": "peft-prefix"}

#: the flags of the former bench.hub_server that are named otherwise in the server's settings
SETTING_ALIASES = {"threads": "torch_threads"}


def ablation_env(settings: str) -> dict[str, str]:
    """An ablation's server settings as PROMPTHUB_* environment variables, from
    ``bucket_overhead_tokens=inf torch_threads=1`` (PROMPTHUB_ prefix optional) or the flag form
    ``--bucket-overhead-tokens inf --threads 1``; each name must be a setting of app.config."""
    from app.config import Settings

    env: dict[str, str] = {}
    tokens = settings.split()
    while tokens:
        tok = tokens.pop(0)
        if tok.startswith("--"):
            name, sep, value = tok[2:].partition("=")
            if not sep:
                if not tokens:
                    raise ValueError(f"ablation setting {tok}: no value")
                value = tokens.pop(0)
        else:
            name, sep, value = tok.partition("=")
            if not sep:
                raise ValueError(f"ablation setting {tok!r}: expected NAME=VALUE")
        name = name.replace("-", "_").lower().removeprefix("prompthub_")
        name = SETTING_ALIASES.get(name, name)
        if name not in Settings.model_fields:
            raise ValueError(f"ablation setting {name!r} is not a server setting (app/config.py)")
        env[f"PROMPTHUB_{name.upper()}"] = value
    return env


def parse_counts(s: str) -> list[int]:
    return sorted({int(x) for x in s.split(",") if x.strip()})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--engines" in argv:  # the in-process engine comparison (bench/serving/engines.py)
        from bench.serving.engines import main as engines_main

        argv.remove("--engines")
        return engines_main(argv)
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=SERVING_DOC.split("\n")[0])
    p.add_argument("--tasks", default="1,8,64,1000", help="task counts for the throughput table")
    p.add_argument("--mixes", default=",".join(MIXES))
    p.add_argument("--memory-tasks", default="1,100,1000", help="loaded-task counts for the memory table")
    p.add_argument("--clients", type=int, default=16, help="concurrent keep-alive HTTP clients")
    p.add_argument("--texts", type=int, default=4, help="texts per request")
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per configuration")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all configurations")
    p.add_argument("--prefix-length", type=int, default=16)
    p.add_argument("--peft", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--peft-max-tasks", type=int, default=1000, help="largest task count loaded into PEFT")
    p.add_argument(
        "--lora-max-tasks",
        type=int,
        default=64,
        help="largest task count loaded into the LoRA peer",
    )
    p.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="peer servers over HTTP (bench/peer_server.py): hf, ort-fp32, ort-int8 (one task each) and "
        "lora (PEFT LoRA, a mixed-adapter batch); '' for none",
    )
    p.add_argument("--cold", type=int, default=10, help="never-requested tasks for the cold-load probe")
    p.add_argument("--no-version-probe", action="store_true", help="skip the train-then-serve timing")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-batch-size", type=int, default=None, help="PROMPTHUB_MAX_BATCH_SIZE (default: settings)"
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=None, help="PROMPTHUB_MAX_WAIT_MS (default: settings)"
    )
    p.add_argument("--quick", action="store_true", help="tiny run for the smoke test (no meaningful timings)")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    p.add_argument("--name", default="serving", help="results file stem")
    p.add_argument("--workdir", default=None, help="where the temporary store goes (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary store")
    p.add_argument(
        "--ablation",
        action="append",
        default=[],
        metavar="NAME:SETTINGS",
        help="also run the server with some settings changed (e.g. 'no-buckets:bucket_overhead_tokens=inf'; "
        "the flag form '--bucket-overhead-tokens inf' works too), measured side by side on --ablation-tasks; "
        "repeatable",
    )
    p.add_argument(
        "--ablation-tasks", default="1,64", help="task counts (mix one / uniform) for ablation servers"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS for every server (default: torch's)"
    )
    p.add_argument(
        "--profile",
        default=None,
        help="py-spy record the PromptHub server during the run into this file (speedscope json)",
    )
    args = p.parse_args(argv)

    if args.quick:
        args.tasks, args.memory_tasks, args.mixes = "1,8", "1,8", "one,uniform"
        args.duration, args.warmup, args.repeats, args.clients, args.cold = 0.5, 0.2, 1, 4, 2
        args.peft_max_tasks = args.lora_max_tasks = 8
        args.no_version_probe = True
        args.threads = args.threads or 1
    counts = parse_counts(args.tasks)
    mem_counts = parse_counts(args.memory_tasks)
    mixes = [m for m in args.mixes.split(",") if m]
    n_tasks = max(counts + mem_counts)
    want_peft = args.peft != "off"
    peers = [x for x in args.peers.split(",") if x]
    unknown = set(peers) - set(PEERS)
    if unknown:
        p.error(f"--peers: unknown {sorted(unknown)} (known: {', '.join(PEERS)})")
    if want_peft:
        try:
            import peft  # noqa: F401
        except ImportError:
            if args.peft == "on":
                raise
            print("peft is not installed: the PEFT baseline is skipped (pip install peft)", file=sys.stderr)
            want_peft = False
            peers = [x for x in peers if x != "lora"]

    import torch

    torch.set_num_threads(1)  # the bench process only builds files and sends requests
    from app.engine.backbone import load_backbone

    machine = machine_info(args.device)
    work = Path(tempfile.mkdtemp(prefix="prompthub-bench-", dir=args.workdir))
    servers: list[ServerProc] = []
    profiler = None
    t_run = time.perf_counter()
    try:
        print(f"[setup] store with {n_tasks} tasks in {work}", flush=True)
        bb = load_backbone("all-MiniLM-L6-v2")
        store = build_store(work, bb, n_tasks, args.cold, args.prefix_length)
        per_task = device_bytes(bb, Path(store["store"]), task_name(0))
        print(
            f"[setup] {store['setup_s']:.1f}s, {store['store_disk_bytes'] / 2**20:.0f} MiB on disk",
            flush=True,
        )

        port = free_port()
        cache_bytes = max(536_870_912, int((n_tasks + args.cold + 16) * per_task["nbytes"] * 1.25))
        env = {
            "PROMPTHUB_DATABASE_URL": store["url"],
            "PROMPTHUB_STORE_DIR": store["store"],
            "PROMPTHUB_DATA_DIR": str(work / "datasets"),
            "PROMPTHUB_BACKBONE": "all-MiniLM-L6-v2",
            "PROMPTHUB_DEVICES": args.device,
            "PROMPTHUB_CACHE_BYTES": str(cache_bytes),
            "PROMPTHUB_EMBEDDED_WORKER": "false" if args.no_version_probe else "true",
            "PROMPTHUB_WORKER_POLL_S": "0.1",
            "PROMPTHUB_LOG_LEVEL": "warning",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if args.max_batch_size:
            env["PROMPTHUB_MAX_BATCH_SIZE"] = str(args.max_batch_size)
        if args.max_wait_ms is not None:
            env["PROMPTHUB_MAX_WAIT_MS"] = str(args.max_wait_ms)
        hub = start_server(
            "prompthub",
            ["-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env,
            work,
            port,
            work / "prompthub.log",
        )
        servers.append(hub)
        by_name: dict[str, ServerProc] = {"prompthub": hub, "bare": hub}
        ablations: list[str] = []
        for spec_ in args.ablation:
            aname, _, asettings = spec_.partition(":")
            aport = free_port()
            aenv = {**env, "PROMPTHUB_EMBEDDED_WORKER": "false", **ablation_env(asettings)}
            asrv = start_server(
                aname,
                ["-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(aport)],
                aenv,
                work,
                aport,
                work / f"{aname}.log",
            )
            servers.append(asrv)
            by_name[aname] = by_name[f"{aname}-bare"] = asrv
            ablations.append(aname)
        peft_counts = [n for n in counts if n <= args.peft_max_tasks] if want_peft else []
        peer_counts = {p_: [1] for p_ in peers if p_ in BARE_PEERS}
        if "lora" in peers:
            peer_counts["lora"] = [n for n in counts if n <= args.lora_max_tasks]
        if peft_counts:
            peer_counts["peft"] = peft_counts
        for pname, pcounts in peer_counts.items():
            if not pcounts:
                continue
            pport = free_port()
            tasks_file = work / f"{pname}_tasks.json"
            tasks_file.write_text(
                json.dumps(
                    {
                        "store": store["store"],
                        "work": str(work),
                        "prefix_length": args.prefix_length,
                        "tasks": [[task_name(i), 1] for i in range(max(pcounts))],
                    }
                )
            )
            psrv = start_server(
                pname,
                ["-m", "bench.peer_server", "--engine", PEER_ENGINE.get(pname, pname)]
                + ["--tasks-file", str(tasks_file), "--port", str(pport), "--device", args.device]
                + (["--max-batch-size", str(args.max_batch_size)] if args.max_batch_size else [])
                + (["--max-wait-ms", str(args.max_wait_ms)] if args.max_wait_ms is not None else []),
                {"PYTHONPATH": str(REPO), **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})},
                REPO,
                pport,
                work / f"{pname}.log",
            )
            servers.append(psrv)
            by_name[pname] = psrv
        t_ready = wait_http(hub, "/readyz", 900)
        print(f"[setup] prompthub ready in {t_ready:.1f}s", flush=True)
        for aname in ablations:
            wait_http(by_name[aname], "/readyz", 900)
            warm(
                by_name[aname].port,
                ["bare"] + [task_name(i) for i in range(max(parse_counts(args.ablation_tasks)))],
            )
        for pname, pcounts in peer_counts.items():
            if pname in by_name:
                t_peer = wait_http(by_name[pname], "/readyz", 1800)
                warm(by_name[pname].port, [task_name(i) for i in range(max(pcounts))] * 2)
                print(f"[setup] {pname} ready in {t_peer:.1f}s ({max(pcounts)} tasks)", flush=True)
        if args.profile:
            import subprocess

            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(hub.pid),
                    "--format",
                    "speedscope",
                    "--output",
                    args.profile,
                    "--rate",
                    "100",
                    "--threads",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )

        warm(hub.port, ["bare"] * 8)
        memory = memory_phase(hub, mem_counts, per_task["nbytes"])
        memory["peers"] = {
            pname: {"rss_bytes": rss_bytes(by_name[pname].pid), "tasks": max(pc)}
            for pname, pc in peer_counts.items()
            if pname in by_name
        }
        print(
            "[memory] "
            + ", ".join(f"{r['tasks']}: {r['rss_bytes'] / 2**20:.0f} MiB" for r in memory["rows"]),
            flush=True,
        )
        cold = cold_phase(hub.port, [f"c{i:04d}" for i in range(args.cold)])
        cold["load_ms_in_process"] = per_task["load_ms_in_process"]
        print(f"[cold] {cold}", flush=True)
        t_w = warm(hub.port, [task_name(i) for i in range(n_tasks)], clients=16)
        print(f"[warm] all {n_tasks} tasks in cache ({t_w:.1f}s)", flush=True)

        configs = [Config("bare", 1, "one")]
        configs += [Config(p_, 1, "one") for p_ in peers if p_ in BARE_PEERS]
        for n in counts:
            for mix in mixes:
                if (n == 1) != (mix == "one"):
                    continue  # one task: only "one"; more tasks: the mixes that spread over them
                configs.append(Config("prompthub", n, mix))
                for pname in ("lora", "peft"):
                    if n in peer_counts.get(pname, []) and mix in ("one", "uniform"):
                        configs.append(Config(pname, n, mix))
        if not any(c.server == "prompthub" and c.mix == "one" for c in configs) and "one" in mixes:
            configs.insert(1, Config("prompthub", 1, "one"))
        for aname in ablations:
            configs.append(Config(f"{aname}-bare", 1, "one"))
            for n in parse_counts(args.ablation_tasks):
                configs.append(Config(aname, n, "one" if n == 1 else "uniform"))
        bodies = make_bodies(args.texts)
        runs: dict[str, list[dict]] = {c.key: [] for c in configs}
        for r in range(args.repeats):
            order = configs[r % len(configs) :] + configs[: r % len(configs)]
            for cfg in order:
                bare_cfg = cfg.server.endswith("bare")
                names = ["bare"] if bare_cfg else [task_name(i) for i in range(cfg.n_tasks)]
                mix = Mix(cfg.mix, names, seed=r)
                srv = by_name[cfg.server]
                ours = cfg.server != "peft"  # the others count their forwards' rows
                b0 = batch_stats(srv.port) if ours else (0.0, 0.0)
                res = run_load(
                    srv.port, request_factory(mix, bodies), args.clients, args.duration, args.warmup
                )
                summ = res.summary(args.texts)
                if ours:
                    b1 = batch_stats(srv.port)
                    summ["mean_batch_rows"] = ratio(b1[0] - b0[0], b1[1] - b0[1])
                runs[cfg.key].append(summ)
                print(
                    f"[round {r + 1}/{args.repeats}] {cfg.key:24s} {summ['rps']:8.1f} req/s "
                    f"{summ['texts_per_s']:8.1f} texts/s p50 {fmt(summ['p50_ms'])} ms p99 {fmt(summ['p99_ms'])} ms"
                    + (f" errors {summ['errors']} {summ['sample_error']}" if summ["errors"] else ""),
                    flush=True,
                )

        versions = None
        if not args.no_version_probe:
            versions = version_phase(hub.port)
            print(f"[version] {versions}", flush=True)
        hub_rss_end = rss_bytes(hub.pid)
    finally:
        if profiler is not None:
            import signal as _signal

            profiler.send_signal(_signal.SIGINT)
            try:
                profiler.wait(60)
            except Exception:
                profiler.kill()
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    table, targets = aggregate(runs, configs, ablations, memory, versions)
    result = {
        "benchmark": "serving",
        "command": "python -m bench.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "settings": {k: v for k, v in vars(args).items()},
        "server": {"cache_bytes": cache_bytes, "rss_end_bytes": hub_rss_end},
        "wall_s": time.perf_counter() - t_run,
        "per_task": {
            "disk_bytes": store["checkpoint_bytes"],
            "bare_disk_bytes": store["bare_checkpoint_bytes"],
            "device_bytes": per_task["nbytes"],
            "kv_bytes": per_task["kv_bytes"],
            "head_bytes": per_task["head_bytes"],
            "store_disk_bytes_all": store["store_disk_bytes"],
            "store_setup_s": store["setup_s"],
        },
        "cold": cold,
        "memory": memory,
        "throughput": table,
        "version_latency": versions,
        "targets": targets,
    }
    return save_results(args.name, result, render_markdown(result), args.out)
