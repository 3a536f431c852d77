"""Session values and request validation: pure, no I/O."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

MODES = ("persona", "anonymize", "blur", "pixelate")
TARGET_SCHEMES = ("rtmp", "rtmps")
MAX_TARGET_URL_LENGTH = 2048
MAX_NAME_LENGTH = 64


class SessionState(str, Enum):
    IDLE = "idle"  # created, no publisher connected (OBS may reconnect here)
    LIVE = "live"  # a publisher is streaming
    ENDED = "ended"  # deleted or past its max duration; every token is dead


class ValidationError(ValueError):
    """A request field is invalid; `field` names it for the 400 body."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Target:
    """An RTMP(S) destination. The URL usually embeds the platform's stream key: keep it out of logs."""

    url: str = field(repr=False)
    name: str = ""

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def public(self) -> dict[str, str]:
        return {"name": self.name, "url": self.redacted_url}


@dataclass
class Session:
    id: str
    owner: str  # id of the API key that created it
    mode: str
    persona: str | None
    targets: list[Target]
    max_duration_s: int | None
    created_at: float
    state: SessionState = SessionState.IDLE
    publish_token_id: str = ""
    publish_token_expires_at: float = 0.0
    live_since: float | None = None
    live_seconds: float = 0.0  # accumulated over earlier publishes, for max_duration_s
    ended_at: float | None = None
    end_reason: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mode": self.mode,
            "persona": self.persona,
            "targets": [t.public() for t in self.targets],
            "max_duration_s": self.max_duration_s,
            "state": self.state.value,
            "created_at": self.created_at,
            "live_since": self.live_since,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "publish_token_expires_at": self.publish_token_expires_at,
        }


@dataclass(frozen=True)
class SessionRequest:
    mode: str
    persona: str | None
    targets: list[Target]
    max_duration_s: int | None


def new_session_id() -> str:
    return "ses_" + secrets.token_urlsafe(12)


def redact_url(url: str) -> str:
    """Keep scheme, host and app; hide the path's last segment and any query (stream keys live there)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    head, _, tail = path.rpartition("/")
    shown_path = f"{head}/***" if tail and head else ("/***" if tail else "")
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{shown_path}"


def parse_session_request(body: Any, *, max_targets: int, max_duration_s: int, partial: bool = False) -> dict[str, Any]:
    """Validate a create (or, with partial=True, update) body; return only the fields given."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    allowed = {"mode", "persona", "targets", "max_duration_s"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(unknown[0], "unknown field")
    out: dict[str, Any] = {}
    if "mode" in body or not partial:
        mode = body.get("mode", "anonymize")
        if mode not in MODES:
            raise ValidationError("mode", f"must be one of {', '.join(MODES)}")
        out["mode"] = mode
    if "persona" in body or not partial:
        persona = body.get("persona")
        if persona is not None and (not isinstance(persona, str) or not 0 < len(persona) <= MAX_NAME_LENGTH):
            raise ValidationError("persona", f"must be a persona id string of 1-{MAX_NAME_LENGTH} characters")
        out["persona"] = persona
    if "targets" in body or not partial:
        out["targets"] = _parse_targets(body.get("targets", []), max_targets)
    if "max_duration_s" in body or not partial:
        value = body.get("max_duration_s")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= max_duration_s):
            raise ValidationError("max_duration_s", f"must be an integer from 1 to {max_duration_s}")
        out["max_duration_s"] = value
    if out.get("mode") == "persona" and out.get("persona") is None and not partial:
        raise ValidationError("persona", "is required when mode is persona")
    return out


def _parse_targets(raw: Any, max_targets: int) -> list[Target]:
    if not isinstance(raw, list):
        raise ValidationError("targets", "must be a list")
    if len(raw) > max_targets:
        raise ValidationError("targets", f"at most {max_targets} targets")
    targets = []
    for i, item in enumerate(raw):
        where = f"targets[{i}]"
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ValidationError(f"{where}.url", "must be a string URL")
        url, name = item["url"], item.get("name", "")
        if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
            raise ValidationError(f"{where}.name", f"must be a string of at most {MAX_NAME_LENGTH} characters")
        if set(item) - {"url", "name"}:
            raise ValidationError(f"{where}", "only url and name are allowed")
        if len(url) > MAX_TARGET_URL_LENGTH or any(c.isspace() for c in url):
            raise ValidationError(f"{where}.url", "is too long or contains whitespace")
        parts = urlsplit(url)
        if parts.scheme not in TARGET_SCHEMES or not parts.hostname:
            raise ValidationError(f"{where}.url", "must be rtmp:// or rtmps:// with a host")
        try:
            parts.port
        except ValueError:
            raise ValidationError(f"{where}.url", "has an invalid port") from None
        targets.append(Target(url=url, name=name or f"target-{i + 1}"))
    return targets


def now() -> float:
    return time.time()
