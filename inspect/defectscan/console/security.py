"""Passwords, session tokens, CSRF tokens and login throttling for the console.

- Passwords are hashed with argon2id (``argon2-cffi``'s defaults, RFC 9106's low-memory
  profile); a hash made with older parameters is replaced at the next good login.
- A session is a random 256-bit token in an HttpOnly, SameSite=Lax cookie; the database keeps
  only its sha256, so a leaked database row cannot be replayed as a cookie.
- Every session has its own CSRF token; a state-changing request must echo it (form field
  ``csrf_token`` or header ``X-CSRF-Token``, which htmx sends through ``hx-headers``).
- The login form, which has no session yet, uses a double-submit token: a random value in a
  short-lived cookie that the form must repeat.
- Logins are throttled per client address in memory (:class:`LoginThrottle`); accounts lock
  in the database after too many bad passwords in a row.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "LoginThrottle",
    "hash_password",
    "hash_token",
    "new_token",
    "password_problem",
    "same_token",
    "verify_password",
]

SESSION_COOKIE = "defectscan_session"
CSRF_COOKIE = "defectscan_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()
# Verifying against this when the user does not exist costs what a real check costs, so the
# response time does not tell which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def password_problem(password: str) -> str | None:
    """Why ``password`` is refused (None: acceptable)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "a password has at most 1024 characters"
    return None


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (with its own salt and parameters)."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> tuple[bool, str | None]:
    """``(matches, new_hash)``: new_hash is set when the stored hash should be upgraded."""
    if password_hash is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        return False, None
    try:
        _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, None
    if _hasher.check_needs_rehash(password_hash):
        return True, _hasher.hash(password)
    return True, None


def new_token() -> str:
    """A random URL-safe token of 256 bits."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The sha256 (hex) a session token is stored under."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; False when either is missing or empty."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


class LoginThrottle:
    """At most ``attempts`` login attempts per client address within ``window_s`` seconds."""

    def __init__(self, attempts: int = 20, window_s: float = 300.0) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str, now: float | None = None) -> bool:
        """Count an attempt from ``client``; False when it is over its budget."""
        now = time.monotonic() if now is None else now
        with self._lock:
            q = self._seen.setdefault(client, deque())
            while q and now - q[0] > self.window_s:
                q.popleft()
            if len(q) >= self.attempts:
                return False
            q.append(now)
            if len(self._seen) > 10_000:  # forget idle addresses
                for key in [k for k, v in self._seen.items() if not v]:
                    del self._seen[key]
            return True
