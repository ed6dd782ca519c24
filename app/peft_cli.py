"""`prompthub peft import | export`: PEFT prefix-tuning adapters into the hub and out of it.

app.engine.peft converts (and refuses what would not be exact); an import is published through
app.versions.publish like any trained version; an export reads a stored version (or a checkpoint
file) and writes the adapter folder. Exit status 0, 1 for an adapter/task that does not fit or is
not found, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peft", help="import or export PEFT prefix-tuning adapters (docs/peft.md)")
    ps = p.add_subparsers(dest="peft_command", required=True)
    i = ps.add_parser(
        "import", help="publish a PEFT adapter folder (+ prompthub_head.safetensors) as a task version"
    )
    i.add_argument(
        "adapter",
        help="folder with adapter_config.json, adapter_model.safetensors, prompthub_head.safetensors",
    )
    i.add_argument("--task", required=True, help="the task to add the version to")
    i.add_argument("--no-activate", action="store_true", help="publish without making it the active version")
    i.add_argument("--backbone", default=None, help="backbone name or folder (default: PROMPTHUB_BACKBONE)")
    e = ps.add_parser("export", help="write a task version as a PEFT adapter folder")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a task in the hub (its active version unless --version)")
    src.add_argument("--checkpoint", help="a checkpoint file or folder instead of a stored task")
    e.add_argument("--version", type=int, default=None)
    e.add_argument("--out", required=True, help="the adapter folder to write")
    e.add_argument("--backbone", default=None, help="backbone name or folder (default: PROMPTHUB_BACKBONE)")
    e.add_argument(
        "--base-model", default=None, help="base_model_name_or_path to record in adapter_config.json"
    )


def peft_command(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.engine.backbone import BackboneError, load_backbone
    from app.engine.checkpoint import CheckpointError
    from app.engine.peft import PeftError

    settings = get_settings()
    where = f"prompthub peft {args.peft_command}"
    try:
        backbone = load_backbone(args.backbone or settings.backbone)
        if args.peft_command == "import":
            doc = _import(args, settings, backbone)
        else:
            doc = _export(args, settings, backbone)
    except (PeftError, CheckpointError, BackboneError, LookupError) as e:
        print(f"{where}: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # an invalid task name
        print(f"{where}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(doc))
    return 0


def _import(args: argparse.Namespace, settings, backbone) -> dict:  # noqa: ANN001 - Settings
    from app import versions
    from app.db.session import get_sessionmaker, run_migrations
    from app.engine.checkpoint import checkpoint_bytes
    from app.engine.peft import import_adapter
    from app.names import validate_task_name
    from app.store import PromptStore

    validate_task_name(args.task)
    task, meta = import_adapter(args.adapter, backbone)
    blob = checkpoint_bytes(task, backbone, {**meta, "source": "peft-import"})
    run_migrations(settings.database_url)
    with get_sessionmaker(settings.database_url)() as s:
        pub = versions.publish(
            s,
            PromptStore(settings.store_dir),
            args.task,
            blob,
            source="peft-import",
            activate=not args.no_activate,
        )
    return {
        "task": pub.task,
        "version": pub.version,
        "sha256": pub.sha256,
        "prefix_length": task.spec.prefix_length,
        "position_offset": task.spec.position_offset,
    }


def _export(args: argparse.Namespace, settings, backbone) -> dict:  # noqa: ANN001 - Settings
    from app.engine.checkpoint import load_checkpoint, load_checkpoint_bytes
    from app.engine.peft import export_adapter

    if args.checkpoint:
        task = load_checkpoint(args.checkpoint, backbone)
        what = {"checkpoint": args.checkpoint}
    else:
        from app import versions
        from app.db.session import get_sessionmaker
        from app.names import validate_task_name
        from app.store import PromptStore

        validate_task_name(args.task)
        with get_sessionmaker(settings.database_url)() as s:
            number, sha = versions.resolve(s, args.task, args.version)
        data = PromptStore(settings.store_dir).read_version(args.task, number, sha)
        task = load_checkpoint_bytes(data, backbone, where=f"task {args.task!r} version {number}")
        what = {"task": args.task, "version": number}
    out = export_adapter(task, backbone, args.out, base_model=args.base_model)
    return {**what, "out": str(out), "prefix_length": task.spec.prefix_length}
