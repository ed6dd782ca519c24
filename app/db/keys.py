"""API keys in the database: create, list, revoke, and find the key of a token."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app import security
from app.db.errors import NotFound
from app.db.models import ApiKey, new_id, utcnow


def create_key(
    s: Session,
    *,
    name: str,
    scopes: Iterable[str],
    tasks: Iterable[str] | None = None,
    expires_in: timedelta | None = None,
    token: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its token (the only time the token exists outside the caller's hands).
    `expires_in`: the key is refused after that long; `token`: a token chosen by the caller (the
    bootstrap key from the environment), else a new random one."""
    name = (name or "").strip()
    if not name or len(name) > 128 or not name.isprintable() or not _encodable(name):
        raise ValueError("give the key a name of 1 to 128 printable characters")
    scope_list = security.normalize_scopes(scopes)
    task_list = security.normalize_task_patterns(tasks)
    if expires_in is not None and expires_in.total_seconds() < 1:
        raise ValueError("expires_in: give at least one second")
    token = token or security.new_token()
    salt = security.new_salt()
    now = utcnow()
    row = ApiKey(
        id=new_id(),
        name=name,
        prefix=security.token_prefix(token),
        salt=salt,
        hash=security.hash_token(token, salt),
        scopes=scope_list,
        tasks=task_list,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    s.add(row)
    s.commit()
    return row, token


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def ensure_bootstrap_key(s: Session, token: str) -> tuple[ApiKey, bool]:
    """The admin key whose token is `token` (PROMPTHUB_BOOTSTRAP_ADMIN_KEY): created on the first start,
    recognised on the next ones (a revoked one stays revoked). Returns (row, created)."""
    token = security.check_bootstrap_token(token)
    row = find_by_token(s, token)
    if row is not None:
        return row, False
    row, _ = create_key(s, name="bootstrap", scopes=["admin"], token=token)
    return row, True


def list_keys(s: Session, include_revoked: bool = True) -> list[ApiKey]:
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(s.scalars(stmt.execution_options(populate_existing=True)))


def get_key(s: Session, id_or_prefix: str) -> ApiKey | None:
    """By id, or by the token prefix that `keys list` shows (when it names one key)."""
    rows = list(
        s.scalars(
            select(ApiKey)
            .where(or_(ApiKey.id == id_or_prefix, ApiKey.prefix == id_or_prefix))
            .execution_options(populate_existing=True)
        )
    )
    return rows[0] if len(rows) == 1 else None


def revoke_key(s: Session, id_or_prefix: str) -> ApiKey:
    row = get_key(s, id_or_prefix)
    if row is None:
        raise NotFound(f"no API key with id or prefix {id_or_prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        s.commit()
    return row


def find_by_token(s: Session, token: str) -> ApiKey | None:
    """The key whose hash matches `token` (revoked or not: the caller decides), or None."""
    if not security.looks_like_token(token):
        return None
    candidates = s.scalars(
        select(ApiKey)
        .where(ApiKey.prefix == security.token_prefix(token))
        .execution_options(populate_existing=True)
    )
    for row in candidates:
        if security.verify_token(token, row.salt, row.hash):
            return row
    return None


def touch(s: Session, key_id: str, when: datetime | None = None) -> None:
    touch_many(s, {key_id: when or utcnow()})


def touch_many(s: Session, used: dict[str, datetime]) -> None:
    """Record when keys were last used (one UPDATE a key, one commit): called off the request path."""
    for key_id, when in used.items():
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(last_used_at=when)
            .execution_options(synchronize_session=False)
        )
    s.commit()


# ---------------------------------------------------------------------------- CLI


def _key_doc(row: ApiKey) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "scopes": list(row.scopes or []),
        "tasks": list(row.tasks) if row.tasks is not None else None,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
    }


def keys_command(args) -> int:  # noqa: ANN001 - argparse.Namespace
    """`prompthub keys create|list|revoke` against PROMPTHUB_DATABASE_URL."""
    import json
    import sys

    from app.config import get_settings
    from app.db.session import get_sessionmaker, run_migrations

    settings = get_settings()
    _audit_to_stderr()
    run_migrations(settings.database_url)
    with get_sessionmaker(settings.database_url)() as s:
        if args.keys_command == "create":
            try:
                expires_in = security.parse_duration(args.expires_in) if args.expires_in else None
                row, token = create_key(
                    s, name=args.name, scopes=args.scopes, tasks=args.tasks, expires_in=expires_in
                )
            except ValueError as e:
                print(f"prompthub keys create: {e}", file=sys.stderr)
                return 2
            security.audit("key.create", _cli_actor(), key_id=row.id, name=row.name, scopes=row.scopes)
            if args.json:
                print(json.dumps({**_key_doc(row), "token": token}))
            else:
                print(token)
                print(
                    f"created key {row.id} ({row.name}; scopes {', '.join(row.scopes)}; "
                    f"tasks {', '.join(row.tasks) if row.tasks else 'all'}; "
                    f"expires {row.expires_at.isoformat(timespec='seconds') if row.expires_at else 'never'}). "
                    "The token above is shown once: store it now.",
                    file=sys.stderr,
                )
            return 0
        if args.keys_command == "list":
            rows = list_keys(s)
            if args.json:
                print(json.dumps([_key_doc(r) for r in rows]))
                return 0
            print(
                f"{'id':36s}  {'prefix':12s}  {'name':20s}  {'scopes':20s}  {'tasks':16s}  {'last used':25s}  state"
            )
            for r in rows:
                print(
                    f"{r.id:36s}  {r.prefix:12s}  {r.name[:20]:20s}  {','.join(r.scopes):20s}  "
                    f"{','.join(r.tasks) if r.tasks else '*':16s}  "
                    f"{r.last_used_at.isoformat(timespec='seconds') if r.last_used_at else 'never':25s}  "
                    f"{_state(r)}"
                )
            return 0
        if args.keys_command == "revoke":
            try:
                row = revoke_key(s, args.key)
            except NotFound as e:
                print(f"prompthub keys revoke: {e}", file=sys.stderr)
                return 1
            security.audit("key.revoke", _cli_actor(), key_id=row.id, name=row.name)
            print(json.dumps(_key_doc(row)) if args.json else f"revoked key {row.id} ({row.name})")
            return 0
    return 2


def _state(row: ApiKey) -> str:
    if row.revoked_at:
        return "revoked"
    if row.expires_at and row.expires_at <= utcnow():
        return "expired"
    return "active" + (f" until {row.expires_at.isoformat(timespec='seconds')}" if row.expires_at else "")


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in a bare container
        return "cli"


def _audit_to_stderr() -> None:
    """The CLI's audit lines go to stderr unless logging is configured already."""
    import logging

    log = security.audit_log
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
