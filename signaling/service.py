"""Session life cycle and publish authorisation, shared by the HTTP API and the RTMP ingest.

Keeps the rules in one place: who may publish, when a session is live, when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from signaling.models import Session, SessionState, new_session_id
from signaling.store import SessionStore
from signaling.tokens import IssuedToken, TokenClaims, TokenError, TokenIssuer

log = logging.getLogger(__name__)

EndListener = Callable[[str, str], Awaitable[None]]  # (session_id, reason)


class PublishDenied(Exception):
    """Why a publish attempt is refused; `status` maps it onto HTTP and RTMP answers."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class LimitReached(Exception):
    pass


@dataclass(frozen=True)
class CreatedSession:
    session: Session
    publish_token: IssuedToken


class SessionService:
    def __init__(
        self,
        store: SessionStore,
        issuer: TokenIssuer,
        *,
        publish_token_ttl_s: int,
        max_sessions: int,
        max_live_sessions: int,
    ) -> None:
        self.store = store
        self.issuer = issuer
        self.publish_token_ttl_s = publish_token_ttl_s
        self.max_sessions = max_sessions
        self.max_live_sessions = max_live_sessions
        self._end_listeners: list[EndListener] = []
        self._lock = asyncio.Lock()  # serialises state transitions on this node

    def add_end_listener(self, listener: EndListener) -> None:
        self._end_listeners.append(listener)

    async def create(self, owner: str, fields: dict) -> CreatedSession:
        async with self._lock:
            if await self.store.count_not_ended() >= self.max_sessions:
                raise LimitReached(f"this node holds at most {self.max_sessions} sessions")
            session = Session(id=new_session_id(), owner=owner, created_at=time.time(), **fields)
            token = self._issue_publish_token(session)
            await self.store.create(session)
        log.info("session created", extra={"session_id": session.id, "mode": session.mode, "targets": len(session.targets)})
        return CreatedSession(session, token)

    async def get_owned(self, owner: str, session_id: str) -> Session | None:
        session = await self.store.get(session_id)
        return session if session is not None and session.owner == owner else None

    async def rotate_publish_token(self, session: Session) -> IssuedToken:
        async with self._lock:
            await self.store.revoke_token(session.publish_token_id, session.publish_token_expires_at)
            token = self._issue_publish_token(session)
            await self.store.save(session)
        return token

    async def update(self, session: Session, fields: dict, state: SessionState | None = None) -> Session | None:
        """Set ``fields`` on the stored session, as it is now (not as ``session`` was read:
        a publish may have begun or ended since). With ``state``: only if the session is
        still in it, else None and nothing changes."""
        async with self._lock:
            current = await self.store.get(session.id) or session
            if state is not None and current.state is not state:
                return None
            for name, value in fields.items():
                setattr(current, name, value)
            await self.store.save(current)
        return current

    async def end(self, session_id: str, reason: str) -> Session | None:
        """End for good: revoke the token, stop the live stream (listeners), keep the record."""
        async with self._lock:
            session = await self.store.get(session_id)
            if session is None or session.state is SessionState.ENDED:
                return session
            self._close_live_period(session)
            session.state = SessionState.ENDED
            session.ended_at = time.time()
            session.end_reason = reason
            await self.store.revoke_token(session.publish_token_id, session.publish_token_expires_at)
            await self.store.save(session)
        log.info("session ended", extra={"session_id": session_id, "reason": reason})
        for listener in self._end_listeners:
            await listener(session_id, reason)
        return session

    async def begin_publish(self, token: str, session_id: str | None = None) -> Session:
        """Authorise a publisher presenting `token` (RTMP stream key or WHIP bearer) and mark the session live.

        `session_id`: the session the request named (the WHIP URL); a token for another one is refused."""
        claims = self.check_token(token, "publish", session_id)
        async with self._lock:
            if await self.store.is_revoked(claims.token_id):
                raise PublishDenied(401, "token revoked")
            session = await self.store.get(claims.session_id)
            if session is None or session.publish_token_id != claims.token_id:
                raise PublishDenied(401, "token does not match a session")
            if session.state is SessionState.ENDED:
                raise PublishDenied(404, "session ended")
            if session.state is SessionState.LIVE:
                raise PublishDenied(409, "session already live")
            live = sum(1 for s in await self.store.list() if s.state is SessionState.LIVE)
            if live >= self.max_live_sessions:
                raise PublishDenied(503, "node is at its live session limit")
            if session.max_duration_s is not None and session.live_seconds >= session.max_duration_s:
                raise PublishDenied(409, "session used up its max duration")
            session.state = SessionState.LIVE
            session.live_since = time.time()
            await self.store.save(session)
        log.info("publish started", extra={"session_id": session.id})
        return session

    def check_token(self, token: str, scope: str, session_id: str | None = None) -> TokenClaims:
        """Signature, expiry and scope, and that it names `session_id` when given. Raises PublishDenied(401)."""
        try:
            claims = self.issuer.verify(token, scope)
        except TokenError as exc:
            raise PublishDenied(401, str(exc)) from None
        if session_id is not None and claims.session_id != session_id:
            raise PublishDenied(401, "token is for another session")
        return claims

    async def authorize_play(self, token: str, session_id: str) -> Session:
        """A WHEP viewer presenting a play token for `session_id`. Raises PublishDenied (401, 404)."""
        claims = self.check_token(token, "play", session_id)
        if await self.store.is_revoked(claims.token_id):
            raise PublishDenied(401, "token revoked")
        session = await self.store.get(claims.session_id)
        if session is None:
            raise PublishDenied(401, "token does not match a session")
        if session.state is SessionState.ENDED:
            raise PublishDenied(404, "session ended")
        return session

    def issue_play_token(self, session: Session, ttl_s: int) -> IssuedToken:
        """A short-lived token a partner hands to one viewer; it dies with the session."""
        return self.issuer.issue(session.id, "play", ttl_s)

    async def end_publish(self, session_id: str) -> None:
        """The publisher went away: back to idle so OBS can reconnect, unless the session ended."""
        async with self._lock:
            session = await self.store.get(session_id)
            if session is None or session.state is not SessionState.LIVE:
                return
            self._close_live_period(session)
            session.state = SessionState.IDLE
            await self.store.save(session)
        log.info("publish stopped", extra={"session_id": session_id})

    async def is_live(self, session_id: str) -> bool:
        session = await self.store.get(session_id)
        return session is not None and session.state is SessionState.LIVE

    def remaining_live_seconds(self, session: Session) -> float | None:
        if session.max_duration_s is None:
            return None
        return max(0.0, session.max_duration_s - session.live_seconds)

    def _issue_publish_token(self, session: Session) -> IssuedToken:
        token = self.issuer.issue(session.id, "publish", self.publish_token_ttl_s)
        session.publish_token_id = token.claims.token_id
        session.publish_token_expires_at = token.claims.expires_at
        return token

    @staticmethod
    def _close_live_period(session: Session) -> None:
        if session.live_since is not None:
            session.live_seconds += time.time() - session.live_since
            session.live_since = None
