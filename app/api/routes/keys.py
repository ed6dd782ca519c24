"""API keys over HTTP (admin, not limited to tasks): create (the token is in this answer only), list,
revoke. The CLI `prompthub keys create|list|revoke` does the same against the database."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app import security
from app.api.auth import KeyAdmin
from app.api.deps import SessionDep
from app.api.errors import InputError
from app.db import keys

router = APIRouter(prefix="/keys", tags=["keys"])

Scope = Literal["predict", "train", "admin"]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    tasks: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, min_length=1, max_length=100, description="task names or glob patterns; omit for every task"
    )
    expires_in: str | None = Field(
        None, max_length=16, description="refuse the key after this long: 30d, 12h, 90m, 2w (default: never)"
    )

    @field_validator("name")
    @classmethod
    def _printable(cls, v: str) -> str:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the name holds a lone UTF-16 surrogate: send valid Unicode") from None
        if not v.strip() or not v.isprintable():
            raise ValueError("give the key a name of printable characters")
        return v

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            security.parse_duration(v)
        return v


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    scopes: list[str]
    tasks: list[str] | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    expires_at: datetime | None = None


class KeyCreated(KeyOut):
    token: str = Field(description="the API key; it is shown this once and cannot be recovered")


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(principal: KeyAdmin, body: KeyCreate, s: SessionDep) -> KeyCreated:
    expires_in = security.parse_duration(body.expires_in) if body.expires_in else None
    try:
        row, token = keys.create_key(
            s, name=body.name, scopes=body.scopes, tasks=body.tasks, expires_in=expires_in
        )
    except ValueError as e:
        raise InputError.at(["body"], str(e)) from None
    security.audit("key.create", principal.actor, key_id=row.id, name=row.name, scopes=row.scopes)
    return KeyCreated(**KeyOut.model_validate(row).model_dump(), token=token)


@router.get("", response_model=list[KeyOut])
def list_keys(_: KeyAdmin, s: SessionDep) -> list[KeyOut]:
    return [KeyOut.model_validate(k) for k in keys.list_keys(s)]


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(
    principal: KeyAdmin,
    request: Request,
    s: SessionDep,
    key_id: Annotated[str, Path(min_length=1, max_length=64, description="the key's id or prefix")],
) -> KeyOut:
    row = keys.revoke_key(s, key_id)
    security.audit("key.revoke", principal.actor, key_id=row.id, name=row.name)
    auth = getattr(request.app.state, "auth", None)
    if auth is not None:
        auth.forget(row.id)
    return KeyOut.model_validate(row)
