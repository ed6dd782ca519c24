"""Remote commands on a PromptHub server: `prompthub remote predict|train|jobs|tasks|activate`
(in a full install) or `prompthub-remote ...` (this package alone).

--url defaults to $PROMPTHUB_URL or http://127.0.0.1:8000, --key to $PROMPTHUB_KEY. Output: JSON on
stdout (one line per prediction or listed row with --json, else a small table); errors on stderr.
Exit codes: 0 done, 1 the server refused or the job failed, 2 usage, 3 the server could not be
reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="server URL (default $PROMPTHUB_URL or http://127.0.0.1:8000)")
    p.add_argument("--key", default=None, help="API key (default $PROMPTHUB_KEY)")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_remote_commands(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `remote` with its subcommands to a parser's subparsers; returns the `remote` parser."""
    remote = sub.add_parser("remote", help="call a PromptHub server: predict, train, jobs, tasks, activate")
    fill_parser(remote)
    return remote


def fill_parser(remote: argparse.ArgumentParser) -> None:
    rs = remote.add_subparsers(dest="remote_command", required=True)

    p = rs.add_parser("predict", help="predict with a task; JSONL predictions on stdout")
    _common(p)
    p.add_argument("task")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="an input text; repeat for several")
    src.add_argument("--input", help="a JSONL file of inputs (strings or objects), '-' for stdin")
    p.add_argument("--version", type=int, default=None)
    p.add_argument("--batch", type=int, default=32, help="inputs per request (default %(default)s)")

    t = rs.add_parser("train", help="queue a training job (files are uploaded first); --wait follows it")
    _common(t)
    t.add_argument("--task", required=True)
    t.add_argument("--task-type", required=True)
    t.add_argument("--train", required=True, help="a data file (uploaded) or dataset:<id>")
    t.add_argument("--eval", default=None, help="a data file (uploaded) or dataset:<id>")
    t.add_argument("--labels", default=None, help="comma-separated label set")
    t.add_argument(
        "--hp", action="append", default=[], metavar="NAME=VALUE", help="a hyperparameter; repeat (epochs=3)"
    )
    t.add_argument("--init-from", default=None)
    t.add_argument("--activate", choices=["always", "never", "if_better"], default="always")
    t.add_argument("--idempotency-key", default=None, help="default: a fresh one (retries reuse it)")
    t.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    t.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")

    j = rs.add_parser("jobs", help="list training jobs (newest first), or show one")
    _common(j)
    j.add_argument("job_id", nargs="?")
    j.add_argument("--state", default=None)
    j.add_argument("--task", default=None)
    j.add_argument("--limit", type=int, default=50, help="at most this many rows (default %(default)s)")
    j.add_argument("--wait", action="store_true", help="with a job id: follow it until it ends")
    j.add_argument("--json", action="store_true")

    k = rs.add_parser("tasks", help="list tasks, or show one with its versions")
    _common(k)
    k.add_argument("name", nargs="?")
    k.add_argument("--task-type", default=None)
    k.add_argument("--name-prefix", default=None)
    k.add_argument("--json", action="store_true")

    a = rs.add_parser("activate", help="serve another version of a task (roll back or forward)")
    _common(a)
    a.add_argument("task")
    a.add_argument("version", type=int)


def _split(client: Any, arg: str | None) -> Any:
    if arg is None:
        return None
    if arg.startswith("dataset:"):
        return {"dataset_id": arg.split(":", 1)[1]}
    return Path(arg)


def _inputs(args: argparse.Namespace) -> list[Any]:
    if args.text:
        return list(args.text)
    f = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    try:
        rows = []
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise SystemExit(_usage(f"{args.input}: line {n}: not JSON ({e})")) from None
        return rows
    finally:
        if f is not sys.stdin:
            f.close()


def _usage(msg: str) -> int:
    print(f"prompthub remote: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _dump(obj: Any) -> str:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        obj = asdict(obj)  # type: ignore[arg-type]
    return json.dumps(obj, default=str, ensure_ascii=False)


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def run(args: argparse.Namespace) -> int:
    from prompthub_client.client import Client
    from prompthub_client.errors import ApiError, JobFailed, PromptHubError

    cmd = args.remote_command
    try:
        with Client(args.url, args.key) as hub:
            if cmd == "predict":
                inputs = _inputs(args)
                if not inputs:
                    return _usage("no inputs")
                for i in range(0, len(inputs), max(1, args.batch)):
                    for p in hub.predict(args.task, inputs[i : i + args.batch], args.version).predictions:
                        print(_dump(p))
                return 0
            if cmd == "train":
                hp = {}
                for item in args.hp:
                    name, sep, value = item.partition("=")
                    if not sep or not name:
                        return _usage(f"--hp {item!r}: use NAME=VALUE")
                    hp[name.strip().replace("-", "_")] = _value(value.strip())
                labels = [w.strip() for w in args.labels.split(",") if w.strip()] if args.labels else None
                job = hub.train(
                    args.task,
                    args.task_type,
                    _split(hub, args.train),
                    _split(hub, args.eval),
                    labels=labels,
                    hyperparameters=hp,
                    init_from=args.init_from,
                    activate=args.activate,
                    idempotency_key=args.idempotency_key,
                )
                if not args.wait:
                    print(_dump({"job_id": job.id, "state": job.state}))
                    return 0
                print(_dump(job.wait(timeout=args.timeout)))
                return 0
            if cmd == "jobs":
                if args.job_id:
                    job = hub.job(args.job_id)
                    print(_dump(job.wait() if args.wait else job.info))
                    return 0
                rows = []
                for n, info in enumerate(
                    hub.jobs(state=args.state, task=args.task, page_size=min(args.limit, 1000))
                ):
                    if n >= args.limit:
                        break
                    rows.append(info)
                if args.json:
                    for info in rows:
                        print(_dump(info))
                else:
                    _table(
                        [[i.id, i.state, ",".join(i.task_names), i.created_at, i.result] for i in rows],
                        ["id", "state", "tasks", "created", "result"],
                    )
                return 0
            if cmd == "tasks":
                if args.name:
                    print(_dump(hub.task(args.name)))
                    return 0
                tasks = list(hub.tasks(task_type=args.task_type, name_prefix=args.name_prefix))
                if args.json:
                    for t in tasks:
                        print(_dump(t))
                else:
                    _table(
                        [[t.name, t.task_type, t.active_version, len(t.labels)] for t in tasks],
                        ["name", "type", "active", "labels"],
                    )
                return 0
            if cmd == "activate":
                t = hub.activate(args.task, args.version)
                print(_dump({"task": t.name, "active_version": t.active_version}))
                return 0
    except ValueError as e:
        return _usage(str(e))
    except ApiError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_API
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_API
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_API
    except PromptHubError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except OSError as e:
        return _usage(str(e))
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prompthub-remote", description="call a PromptHub server")
    fill_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
