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
        if cfg.server == "prompthub":
            pk = f"peft/{cfg.n_tasks}/{'one' if cfg.mix == 'one' else 'uniform'}"
            if pk in runs and cfg.mix in ("one", "uniform"):
                row["vs_peft"] = ratio(a["rps"], agg(pk)["rps"])
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
                "x PEFT",
                "errors",
            ],
            rows,
        )
    )
    lines += [
        "",
        "`bare`: the same server, batcher and policy serving a task with no prefix (a head only): the "
        "ceiling of this design. `peft`: peft PrefixTuning adapters, `set_adapter` per request "
        "(bench/peft_server.py). Mixes: `one` task only; `uniform` over the tasks; `zipf` (s=1.1); "
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
    if mem.get("peft_rss_bytes"):
        lines.append(
            f"PEFT server RSS with {fmt(mem['peft_adapters'])} adapters: "
            f"{fmt(mem['peft_rss_bytes'] / 2**20)} MiB."
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
