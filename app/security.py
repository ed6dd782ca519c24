"""API keys: tokens, their salted hashes, scopes and task allow-lists.

A token is ``ph_`` followed by 43 URL-safe characters (32 random bytes, `secrets.token_urlsafe`). It is
shown once, at creation. The database keeps:

- ``prefix``: the token's first 12 characters (``ph_`` + 9 random ones), to find the row;
- ``salt``: 16 random bytes, one per key;
- ``hash``: ``sha256(salt || token)``, compared in constant time (`hmac.compare_digest`).

sha256 with a per-key salt, not a slow password hash (scrypt, argon2), on purpose: the token holds 256
random bits, so there is nothing to guess and a slow hash would only cost CPU on every request.

Scopes: ``predict``, ``train``, ``admin``; ``admin`` implies the other two. A key may be limited to
some tasks by glob patterns (`fnmatch`, case-sensitive: ``sentiment``, ``support-*``); ``None`` means
every task.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

TOKEN_PREFIX = "ph_"
PREFIX_CHARS = 12
SCOPES = ("predict", "train", "admin")
_PATTERN_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-*?[]!")
MIN_BOOTSTRAP_CHARS = 32  # random characters after the prefix of a key given in the environment

audit_log = logging.getLogger("prompthub.audit")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_prefix(token: str) -> str:
    return token[:PREFIX_CHARS]


def looks_like_token(token: str) -> bool:
    return token.startswith(TOKEN_PREFIX) and PREFIX_CHARS < len(token) <= 256 and token.isascii()


def new_salt() -> str:
    return secrets.token_hex(16)


def hash_token(token: str, salt_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + token.encode()).hexdigest()


def verify_token(token: str, salt_hex: str, hash_hex: str) -> bool:
    return hmac.compare_digest(hash_token(token, salt_hex), hash_hex)


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    out: list[str] = []
    for s in scopes:
        s = s.strip().lower()
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}: use {', '.join(SCOPES)}")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError(f"give at least one scope ({', '.join(SCOPES)})")
    return [s for s in SCOPES if s in out]


def normalize_task_patterns(patterns: Iterable[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    out: list[str] = []
    for p in patterns:
        p = p.strip()
        if not p or len(p) > 64 or not set(p) <= _PATTERN_CHARS:
            raise ValueError(
                f"invalid task pattern {p!r}: use task names or globs of a-z, 0-9, '-', '_', '*', '?', '[]'"
            )
        if p not in out:
            out.append(p)
    if not out:
        raise ValueError("give at least one task pattern, or none to allow every task")
    return out


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key (id, name, scopes, task patterns), or the local operator when keys are not
    required (`key_id` None, every scope)."""

    key_id: str | None
    name: str
    scopes: tuple[str, ...]
    tasks: tuple[str, ...] | None = None

    @classmethod
    def local(cls) -> Principal:
        return cls(key_id=None, name="keyless", scopes=SCOPES, tasks=None)

    @property
    def actor(self) -> str:
        """Who, for the audit log: the key's id and name, or "keyless" (a loopback connection)."""
        return "keyless" if self.key_id is None else f"key:{self.key_id} ({self.name})"

    def has_scope(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def allows_task(self, task: str) -> bool:
        if self.tasks is None:
            return True
        return any(fnmatch.fnmatchcase(task, p) for p in self.tasks)

    def allows_tasks(self, tasks: Sequence[str]) -> bool:
        return all(self.allows_task(t) for t in tasks)


_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` as a timedelta (at least one second)."""
    m = _DURATION.match(text or "")
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"invalid duration {text!r}: use a number and s, m, h, d or w, e.g. 30d")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])


def audit(event: str, actor: str, **fields: object) -> None:
    """One structured line on the `prompthub.audit` logger: who did what, when (UTC)."""
    doc = {"event": event, "actor": actor, "at": datetime.now(UTC).isoformat(timespec="seconds"), **fields}
    audit_log.info("%s", json.dumps(doc, default=str, sort_keys=True))


def check_bootstrap_token(token: str) -> str:
    token = token.strip()
    if not looks_like_token(token) or len(token) < len(TOKEN_PREFIX) + MIN_BOOTSTRAP_CHARS:
        raise ValueError(
            f"PROMPTHUB_BOOTSTRAP_ADMIN_KEY must be '{TOKEN_PREFIX}' followed by at least "
            f"{MIN_BOOTSTRAP_CHARS} random ASCII characters, e.g. from "
            "`python -c \"import secrets; print('ph_' + secrets.token_urlsafe(32))\"`"
        )
    return token
