from __future__ import annotations

import jwt
import pytest

from signaling.apikeys import ApiKeyRing, generate_key, hash_key, load_or_create_dev_key
from signaling.tokens import TokenError, TokenIssuer

SECRET = "s" * 32


def test_issue_and_verify_round_trip() -> None:
    issuer = TokenIssuer(SECRET)
    issued = issuer.issue("ses_1", "publish", ttl_s=60)
    claims = issuer.verify(issued.token, "publish")
    assert claims.session_id == "ses_1" and claims.scope == "publish"
    assert len(claims.token_id) >= 22  # 128 random bits, base64url
    assert issued.token not in repr(issued)


def test_wrong_scope_expired_forged_and_garbage_fail() -> None:
    issuer = TokenIssuer(SECRET)
    issued = issuer.issue("ses_1", "publish", ttl_s=60, now=1000)
    with pytest.raises(TokenError, match="scope"):
        issuer.verify(issued.token, "play", now=1001)
    with pytest.raises(TokenError, match="expired"):
        issuer.verify(issued.token, "publish", now=1060)
    assert issuer.verify(issued.token, "publish", now=1059).session_id == "ses_1"
    with pytest.raises(TokenError):
        TokenIssuer("t" * 32).verify(issued.token, "publish", now=1001)
    forged = jwt.encode({"sid": "ses_1", "scope": "publish", "jti": "x", "iat": 1, "exp": 9e9, "iss": "hikariedge"}, "", algorithm="none")
    with pytest.raises(TokenError):
        issuer.verify(forged, "publish")
    for junk in ("", "abc", "a.b.c", "x" * 5000):
        with pytest.raises(TokenError):
            issuer.verify(junk, "publish")


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError):
        TokenIssuer("short")


def test_api_key_ring_checks_hashes(tmp_path) -> None:
    key = generate_key()
    ring = ApiKeyRing(["sha256:" + hash_key(key), "plain-key-for-dev"])
    assert ring.check(key) is not None and ring.check("plain-key-for-dev") is not None
    assert ring.check(key + "x") is None and ring.check("") is None
    with pytest.raises(ValueError):
        ring.add("sha256:nothex")


def test_dev_key_is_made_once_and_only_its_hash_is_stored(tmp_path) -> None:
    key, entry = load_or_create_dev_key(tmp_path)
    assert key is not None and key.startswith("hk_")
    stored = (tmp_path / "dev_api_key.json").read_text()
    assert key not in stored and hash_key(key) in stored
    assert (tmp_path / "dev_api_key.json").stat().st_mode & 0o777 == 0o600
    again, entry2 = load_or_create_dev_key(tmp_path)
    assert again is None and entry2 == entry
    assert ApiKeyRing([entry2]).check(key) is not None
