"""Scoped, expiring, revocable tokens signed with PyJWT (HS256).

A token names one session and one scope (publish or play) and carries a random id (jti) so
that the store can revoke it. Signature checks are constant-time inside PyJWT (hmac.compare_digest).
Never log a token: log its jti at most.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
ISSUER = "hikariedge"
SCOPES = ("publish", "play")


class TokenError(Exception):
    """The token is malformed, forged, expired or of the wrong scope. The message is safe to log."""


@dataclass(frozen=True)
class TokenClaims:
    session_id: str
    scope: str
    token_id: str
    expires_at: float


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: TokenClaims

    def __repr__(self) -> str:  # keep the secret part out of every repr and log line
        return f"IssuedToken(claims={self.claims!r})"


class TokenIssuer:
    def __init__(self, secret: str | bytes | None = None) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)
        self._key = secret.encode() if isinstance(secret, str) else secret
        if len(self._key) < 32:
            raise ValueError("token secret must be at least 32 bytes")

    def issue(self, session_id: str, scope: str, ttl_s: float, now: float | None = None) -> IssuedToken:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        issued_at = int(now if now is not None else time.time())
        expires_at = issued_at + int(ttl_s)
        token_id = secrets.token_urlsafe(16)  # 128 bits
        payload = {"iss": ISSUER, "sid": session_id, "scope": scope, "jti": token_id, "iat": issued_at, "exp": expires_at}
        token = jwt.encode(payload, self._key, algorithm=ALGORITHM)
        return IssuedToken(token=token, claims=TokenClaims(session_id, scope, token_id, float(expires_at)))

    def verify(self, token: str, scope: str, now: float | None = None) -> TokenClaims:
        """Check signature, expiry, issuer and scope. Revocation is the store's job."""
        if not token or len(token) > 4096:
            raise TokenError("missing or oversized token")
        options = {"require": ["exp", "iat", "jti", "sid", "scope", "iss"]}
        try:
            if now is None:
                payload = jwt.decode(token, self._key, algorithms=[ALGORITHM], issuer=ISSUER, options=options)
            else:  # tests pass a clock; PyJWT checks exp against its own, so check ours by hand
                payload = jwt.decode(
                    token, self._key, algorithms=[ALGORITHM], issuer=ISSUER, options={**options, "verify_exp": False}
                )
                if payload["exp"] <= now:
                    raise TokenError("token expired")
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token ({type(exc).__name__})") from None
        if payload.get("scope") != scope:
            raise TokenError(f"token scope is not {scope}")
        if not isinstance(payload.get("sid"), str) or not isinstance(payload.get("jti"), str):
            raise TokenError("invalid token claims")
        return TokenClaims(payload["sid"], payload["scope"], payload["jti"], float(payload["exp"]))
