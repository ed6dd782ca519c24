"""``python -m bench.datasets list | prepare NAME... | prepare all``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.datasets import __doc__ as DATASETS_DOC
from bench.datasets.registry import DATASETS
from bench.datasets.sources import DatasetError
from bench.datasets.splits import ENV_CACHE_DIR, is_prepared, prepare, read_manifest


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.datasets", description=DATASETS_DOC.split("\n\n")[0]
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"cache directory (default ${ENV_CACHE_DIR} or <repo>/.cache/datasets)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_prepare = sub.add_parser("prepare", help="fetch, verify and convert datasets")
    p_prepare.add_argument(
        "names", nargs="+", metavar="NAME", help=f"dataset names or 'all' ({', '.join(DATASETS)})"
    )
    p_prepare.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    sub.add_parser("list", help="list the registered datasets and whether they are prepared")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, info in DATASETS.items():
            manifest = read_manifest(name, args.cache_dir) if is_prepared(name, args.cache_dir) else None
            state = (
                ", ".join(f"{s}={c}" for s, c in manifest["counts"].items()) if manifest else "not prepared"
            )
            print(f"{name:14} {info.task_type:21} {info.source.spec:22} [{state}]  license: {info.license}")
        return 0

    names = list(DATASETS) if args.names == ["all"] else args.names
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    for name in names:
        try:
            paths = prepare(name, cache_dir=args.cache_dir, progress=_stderr, force=args.force)
        except DatasetError as exc:
            _stderr(f"[datasets] {name}: FAILED: {exc}")
            return 1
        manifest = read_manifest(name, args.cache_dir) or {}
        counts = manifest.get("counts", {})
        print(f"{name}: " + ", ".join(f"{s}={counts.get(s, '?')} ({p})" for s, p in paths.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
