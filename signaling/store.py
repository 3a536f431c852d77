"""Session state behind an interface: in memory now, Redis later (same async methods)."""

from __future__ import annotations

import copy
import time
from typing import Protocol

from signaling.models import Session, SessionState


class SessionStore(Protocol):
    async def create(self, session: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def save(self, session: Session) -> None: ...
    async def list(self, owner: str | None = None) -> list[Session]: ...
    async def count_not_ended(self) -> int: ...
    async def revoke_token(self, token_id: str, expires_at: float) -> None: ...
    async def is_revoked(self, token_id: str) -> bool: ...
    async def ping(self) -> bool: ...


class InMemorySessionStore:
    """Single-node store. Hands out copies so callers cannot change state without save()."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._revoked: dict[str, float] = {}

    async def create(self, session: Session) -> None:
        if session.id in self._sessions:
            raise KeyError(f"session {session.id} exists")
        self._sessions[session.id] = copy.deepcopy(session)

    async def get(self, session_id: str) -> Session | None:
        session = self._sessions.get(session_id)
        return copy.deepcopy(session) if session is not None else None

    async def save(self, session: Session) -> None:
        self._sessions[session.id] = copy.deepcopy(session)

    async def list(self, owner: str | None = None) -> list[Session]:
        return [copy.deepcopy(s) for s in self._sessions.values() if owner is None or s.owner == owner]

    async def count_not_ended(self) -> int:
        return sum(1 for s in self._sessions.values() if s.state is not SessionState.ENDED)

    async def revoke_token(self, token_id: str, expires_at: float) -> None:
        now = time.time()
        self._revoked = {k: v for k, v in self._revoked.items() if v > now}  # expired tokens fail anyway
        self._revoked[token_id] = expires_at

    async def is_revoked(self, token_id: str) -> bool:
        return token_id in self._revoked

    async def ping(self) -> bool:
        return True
