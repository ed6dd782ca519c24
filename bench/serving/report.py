"""The serving benchmark's table: medians over rounds, ratios, targets, and its markdown."""

from __future__ import annotations

from bench.common import fmt, md_table, median, ratio


def aggregate(runs: dict, configs: list, ablations: list[str], memory: dict, versions: dict | None):
    """Per-configuration medians over the rounds, ratios against the bare server measured in the
    same rounds (an ablation against its own bare task), and the targets."""

    def agg(key: str) -> dict:
        rs = runs[key]
        return {
            "rps": median([x["rps"] for x in rs]),
            "texts_per_s": median([x["texts_per_s"] for x in rs]),
            "p50_ms": median([x["p50_ms"] for x in rs]),
            "p99_ms": median([x["p99_ms"] for x in rs]),
            "errors": sum(x["errors"] for x in rs),
            "mean_batch_rows": median([x.get("mean_batch_rows") for x in rs]),
            "repeats": rs,
        }

    bare = agg("bare/1/one")
    table = []
    for cfg in configs:
        a = agg(cfg.key)
        base = bare
        if cfg.server in ablations or cfg.server.endswith("-bare"):
            base = agg(f"{cfg.server.removesuffix('-bare')}-bare/1/one")
        row = {
            "server": cfg.server,
            "tasks": cfg.n_tasks,
            "mix": cfg.mix,
            **a,
            "vs_bare": ratio(a["rps"], base["rps"]),
            "vs_shipped_bare": ratio(a["rps"], bare["rps"]),
        }
        if "hf/1/one" in runs:
            row["vs_transformers"] = ratio(a["rps"], agg("hf/1/one")["rps"])
        if (cfg.server == "prompthub" or cfg.server in ablations) and cfg.mix in ("one", "uniform"):
            for peer in ("peft", "lora"):
                pk = f"{peer}/{cfg.n_tasks}/{cfg.mix}"
                if pk in runs:
                    row[f"vs_{peer}"] = ratio(a["rps"], agg(pk)["rps"])
        table.append(row)

    def find(server, n, mix):
        return next((r for r in table if (r["server"], r["tasks"], r["mix"]) == (server, n, mix)), None)

    targets = {}
    u64 = find("prompthub", 64, "uniform")
    if u64:
        targets["uniform_64_vs_bare"] = {"value": u64["vs_bare"], "target": 0.9}
    big = [r for r in table if r["server"] == "prompthub" and r["tasks"] >= 10000 and r["mix"] == "uniform"]
    if big:
        targets["uniform_10000_vs_bare"] = {"value": big[0]["vs_bare"], "target": 0.85}
    for server in ["prompthub", *ablations]:  # the shipped settings, then each ablation's
        row = find(server, 64, "uniform")
        tag = "" if server == "prompthub" else f" ({server})"
        if row and row.get("vs_transformers") is not None:
            targets[f"uniform_64_vs_transformers_server{tag}"] = {
                "value": row["vs_transformers"],
                "target": 1.75,
            }
        if row and row.get("vs_lora") is not None:
            targets[f"uniform_64_vs_lora_server{tag}"] = {"value": row["vs_lora"], "target": 2.0}
    vp = [r.get("vs_peft") for r in table if r.get("vs_peft") is not None and r["mix"] == "uniform"]
    if vp:
        targets["vs_peft_switching_min"] = {"value": min(vp), "target": 10.0}
    if versions:
        lat = [j.get("job_finished_to_first_prediction_s") for j in versions["jobs"]]
        targets["new_version_served_s_max"] = {
            "value": max((x for x in lat if x is not None), default=None),
            "target": 1.0,
            "lower_is_better": True,
        }
    mem_rows = memory["rows"]
    if mem_rows:
        targets["memory_within_backbone_plus_task_bytes"] = {
            "value": all(r["within_budget"] for r in mem_rows),
            "target": True,
        }

    return table, targets


def render_markdown(res: dict) -> str:
    m = res["machine"]
    s = res["settings"]
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, device {m['device']}, "
        f"torch {m['torch']}, transformers {m.get('transformers')}, peft {m.get('peft')}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])} (shared machine)  ",
        f"Load: {s['clients']} concurrent keep-alive HTTP clients on loopback, {s['texts']} texts a request, "
        f"{s['duration']} s measured per configuration after {s['warmup']} s warm-up, {s['repeats']} rounds "
        "(order rotated); medians over rounds; ratios against the bare backbone measured in the same rounds.",
        "",
        "## Throughput and latency",
        "",
    ]
    rows = []
    for r in res["throughput"]:
        rows.append(
            [
                r["server"],
                fmt(r["tasks"]),
                r["mix"],
                fmt(r["rps"]),
                fmt(r["texts_per_s"]),
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                fmt(r["mean_batch_rows"]),
                fmt(r["vs_bare"], 2),
                fmt(r.get("vs_transformers"), 2),
                fmt(r.get("vs_lora"), 2),
                fmt(r.get("vs_peft"), 1),
                r["errors"],
            ]
        )
    lines.append(
        md_table(
            [
                "server",
                "tasks",
                "mix",
                "req/s",
                "texts/s",
                "p50 ms",
                "p99 ms",
                "rows/forward",
                "x bare",
                "x transformers",
                "x LoRA",
                "x PEFT",
                "errors",
            ],
            rows,
        )
    )
    lines += [
        "",
        "`bare`: the same server, batcher and policy serving a task with no prefix (a head only): the "
        "ceiling of this design. Peers (bench/peer_server.py, each its own minimal FastAPI server with "
        "the same batch size and wait as PromptHub's batcher): `hf` the transformers forward, `ort-fp32` / "
        "`ort-int8` ONNX Runtime on the bare model (one task each), `lora` PEFT LoRA r=8 with one adapter a "
        "task and rows of different tasks in one forward (`adapter_names`); `peft`: PEFT PrefixTuning "
        "adapters, `set_adapter` per request, no batching across requests. x transformers / x LoRA / "
        "x PEFT: req/s against `hf` (1 task) and against LoRA / PEFT at the same task count and mix. Mixes: `one` task only; `uniform` over the tasks; `zipf` (s=1.1); "
        "`switch`: round robin, every request a different task than the last.",
        "",
    ]
    pt = res["per_task"]
    mem = res["memory"]
    lines += [
        "## Memory",
        "",
        f"Per task: {fmt(pt['disk_bytes'])} bytes on disk (safetensors with metadata; "
        f"{fmt(pt['bare_disk_bytes'])} for a head-only task), {fmt(pt['device_bytes'])} bytes on the device "
        f"(K/V {fmt(pt['kv_bytes'])} + head {fmt(pt['head_bytes'])}).",
        "",
    ]
    mrows = [
        [
            fmt(r["tasks"]),
            fmt(r["rss_bytes"] / 2**20),
            fmt(r["over_backbone_bytes"] / 2**20),
            fmt(r["per_task_bytes"] / 1000, 1),
            fmt(r["budget_bytes"] / 2**20),
            "yes" if r["within_budget"] else "NO",
        ]
        for r in mem["rows"]
    ]
    lines.append(
        md_table(
            [
                "tasks loaded",
                "server RSS MiB",
                "over backbone MiB",
                "kB per task",
                "budget MiB (backbone + tasks' bytes)",
                "within (64 MiB slack)",
            ],
            mrows,
        )
    )
    lines += [
        "",
        f"Server RSS with the backbone only (after warm-up requests): "
        f"{fmt(mem['backbone_rss_bytes'] / 2**20)} MiB.",
    ]
    for pname, peer in (mem.get("peers") or {}).items():
        lines.append(
            f"`{pname}` server RSS with {fmt(peer['tasks'])} tasks: {fmt(peer['rss_bytes'] / 2**20)} MiB."
        )
    c = res["cold"]
    lines += [
        "",
        "## Cold load and new versions",
        "",
        f"Cold prefix load: {fmt(c.get('load_ms_in_process'), 2)} ms in process (read + sha256 + parse + "
        f"place); over HTTP the first request to a task takes {fmt(c.get('first_request_ms'), 1)} ms against "
        f"{fmt(c.get('warm_request_ms'), 1)} ms once cached (n={c.get('n')}).",
    ]
    if res.get("version_latency"):
        for j in res["version_latency"]["jobs"]:
            lines.append(
                f"- job for version {j['version']}: {j['state']}, first prediction on the new version "
                f"{fmt(j.get('job_finished_to_first_prediction_s'), 3)} s after the job's finished_at "
                f"(predictions polled every ~10 ms)"
            )
    lines += ["", "## Targets", ""]
    trows = [
        [k, fmt(v["value"], 2) if isinstance(v["value"], float) else v["value"], v["target"]]
        for k, v in res["targets"].items()
    ]
    lines.append(md_table(["target", "measured", "goal"], trows))
    return "\n".join(lines)
