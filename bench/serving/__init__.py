"""Serving benchmark: the real PromptHub server over HTTP against its peers' servers.

    python -m bench.serving                      # default: 1, 8, 64, 1,000 tasks (< 15 min here)
    python -m bench.serving --tasks 1,8,64,1000,10000 --memory-tasks 1,100,1000,10000
    python -m bench.serving --quick              # tiny smoke run (tests/bench)
    python -m bench.serving --device cuda        # PROMPTHUB_DEVICES=cuda for the server

One run does everything side by side, on one machine, in one go:

* a temporary prompt store + SQLite database with N synthetic P-Tuning v2 tasks (MiniLM,
  16-token prefix at every layer, random K/V and a random 4-label head each: the bytes and the
  compute of a real task; accuracy is irrelevant here), a `bare` task (a head, no prefix:
  baseline (a), the same server, batcher and policy with the prefix taken away) and a few
  never-requested `cold` tasks;
* the PromptHub server (`python -m app.cli serve`, as a user runs it) and its peers, each a
  minimal FastAPI server (bench/peer_server.py; `--peers`, `--peft`): the transformers forward
  and ONNX Runtime fp32 / int8 on the bare model (one task each), PEFT LoRA with a
  mixed-adapter batch (`adapter_names`), batching across requests as PromptHub's batcher does;
  and PEFT PrefixTuning, `set_adapter` per request;
* memory: server RSS with 1, 100, 1,000 (, 10,000) tasks loaded; bytes per task on disk and on
  the device; cold-load time; then throughput rounds (every configuration once per round, the
  order rotated each round, `--repeats` rounds; medians and ratios against the bare backbone
  measured in the same rounds); last, time from a training job's success to the first
  prediction served by its new version;
* ablations (`--ablation NAME:SETTINGS`): more instances of the same server, each with some
  of its settings changed through PROMPTHUB_* environment variables (e.g.
  `no-buckets:bucket_overhead_tokens=inf`), measured side by side with the shipped one.

Modules: `store` (the synthetic tasks), `load` (request mixes and measurement phases),
`report` (aggregation and markdown), `cli` (the command line).
"""
