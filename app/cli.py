"""Command line: `prompthub train | predict | serve | worker | migrate | keys | doctor | peft | remote`.

Each subcommand lives in the module that owns it; this file only parses and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType


def _comma_list(value: str) -> list[str]:
    return [w.strip() for w in value.split(",") if w.strip()]


def add_training_options(p: argparse.ArgumentParser) -> None:
    """One flag per row of the engine's options table (types, choices, defaults, help)."""
    from app.engine.options import OPTIONS

    types = {"int": int, "float": float, "str": str, "layers": str, "words": _comma_list}
    for o in OPTIONS:
        flags = [o.flag, *o.cli_aliases]
        if o.kind == "bool":  # --flag / --no-flag; unset: the table's default
            p.add_argument(
                *flags,
                dest=o.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=o.help + f" (default {'on' if o.default else 'off'})",
            )
            continue
        default = None if o.method_defaults or o.task_defaults else o.default
        help_ = o.help
        if o.task_defaults:
            per = ", ".join(f"{v:g} for {t}" for t, v in o.task_defaults.items())
            help_ += f" (default {o.default:g}; {per})"
        elif o.method_defaults:
            per = ", ".join(f"{v:g} for {m}" for m, v in o.method_defaults.items())
            help_ += f" (default {o.default:g}; {per})"
        elif o.default is not None:
            help_ += " (default %(default)s)"
        if o.kind == "words":
            help_ += ", comma-separated"
        p.add_argument(
            *flags, dest=o.name, type=types[o.kind], choices=o.choices, default=default, help=help_
        )


def _add_train(sub: argparse._SubParsersAction) -> None:
    from app.engine.tasks import TASK_TYPES

    p = sub.add_parser("train", help="train a task from a labelled file (no server needed)")
    p.add_argument("--task-type", required=True, choices=TASK_TYPES)
    p.add_argument(
        "--train",
        required=True,
        help="training data: JSONL, SQuAD JSON, or CSV/TSV for text-column task types",
    )
    p.add_argument("--eval", help="held-out data for evaluation and best-epoch selection")
    p.add_argument("--out", required=True, help="output folder for checkpoint.safetensors and metrics.json")
    p.add_argument(
        "--backbone", default=None, help="backbone name or local directory (default all-MiniLM-L6-v2)"
    )
    add_training_options(p)
    p.add_argument(
        "--search",
        type=int,
        default=None,
        metavar="N",
        help="search N settings (lr, prefix length, layers, MLP) on the held-out split; keep the best",
    )
    p.add_argument(
        "--search-metric", default=None, help="metric the search maximises (default: the primary one)"
    )
    p.add_argument(
        "--search-timeout", type=float, default=None, help="stop starting trials after this many seconds"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a checkpoint over an input file, JSONL predictions to stdout")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or .safetensors file)")
    p.add_argument("--input", required=True, help="JSONL/CSV/JSON inputs; labels are not needed")
    p.add_argument("--backbone", default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prompthub")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prompthub",
        description="P-Tuning v2 prompt hub",
        epilog="exit status: 0 ok, 1 runtime error, 2 usage error, 65 invalid input data, "
        "66 input file missing or unreadable",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_predict(sub)
    s = sub.add_parser("serve", help="run the API server (host/port from PROMPTHUB_HOST/PROMPTHUB_PORT)")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--no-worker", action="store_true", help="do not start the embedded training worker")
    w = sub.add_parser("worker", help="run a training worker against the configured database")
    w.add_argument("--once", action="store_true", help="process at most one job, then exit")
    w.add_argument("--poll", type=float, default=None, help="seconds between polls for queued jobs")
    sub.add_parser("migrate", help="apply database migrations")
    _add_keys(sub)
    _remote_cli().add_remote_commands(sub)
    d = sub.add_parser("doctor", help="check that the database and the prompt store agree (and repair)")
    d.add_argument("--repair", action="store_true", help="fix what is safe to fix, then check again")
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    d.add_argument(
        "--temp-age", type=float, default=60.0, help="temp files older than this many seconds are leftovers"
    )
    d.add_argument(
        "--check-backbone",
        action="store_true",
        help="also load the backbone and check every version's identity",
    )
    from app.peft_cli import add_parser as add_peft_parser

    add_peft_parser(sub)
    return parser


def _add_keys(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="API keys: create, list, revoke")
    ks = k.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="create a key; its token is printed once")
    c.add_argument("--name", required=True)
    c.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        required=True,
        choices=["predict", "train", "admin"],
        help="repeat for several; admin implies the others",
    )
    c.add_argument("--task", action="append", dest="tasks", help="limit to tasks (names or globs); repeat")
    c.add_argument(
        "--expires-in",
        dest="expires_in",
        help="refuse the key after this long: 30d, 12h, 90m, 2w (default: never)",
    )
    c.add_argument("--json", action="store_true")
    li = ks.add_parser("list", help="list keys (never their tokens)")
    li.add_argument("--json", action="store_true")
    r = ks.add_parser("revoke", help="revoke a key by id or prefix")
    r.add_argument("key", help="the key's id or its prefix (ph_...)")
    r.add_argument("--json", action="store_true")


def _remote_cli() -> ModuleType:
    """`prompthub remote ...` is the client package's command line (clients/python, installed by
    scripts/setup.sh; found in the source tree when it is not installed)."""
    try:
        import prompthub_client.cli as remote
    except ImportError:
        sys.path.append(str(Path(__file__).resolve().parents[1] / "clients" / "python"))
        import prompthub_client.cli as remote
    return remote


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from app.engine.cli_commands import train_command

        return train_command(args)
    if args.command == "predict":
        from app.engine.cli_commands import predict_command

        return predict_command(args)
    if args.command == "serve":
        from app.api.server import serve_command

        return serve_command(args)
    if args.command == "worker":
        from app.jobs.process import worker_command

        return worker_command(args)
    if args.command == "migrate":
        from app.db.session import migrate_command

        return migrate_command(args)
    if args.command == "keys":
        from app.db.keys import keys_command

        return keys_command(args)
    if args.command == "doctor":
        from app.ops.doctor import doctor_command

        return doctor_command(args)
    if args.command == "peft":
        from app.peft_cli import peft_command

        return peft_command(args)
    if args.command == "remote":
        return _remote_cli().run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
