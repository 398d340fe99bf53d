"""Console users, their sessions and the audit trail: rows only, no hashing.

Every function takes a keyword-only ``session`` and never commits: the caller owns the
transaction. Password hashing and token generation live in :mod:`defectscan.console.security`;
this module stores and finds what that produces (the sha256 of a session token, never the
token; an argon2 hash, never a password).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from defectscan.errors import StoreError
from defectscan.store._sql import _aware
from defectscan.store.schema import ROLES, AuditEntry, ConsoleSession, User, utcnow

__all__ = [
    "LoginState",
    "add_user",
    "audit",
    "create_session",
    "find_session",
    "get_user",
    "list_audit",
    "list_users",
    "note_failed_login",
    "note_login",
    "revoke_session",
    "revoke_user_sessions",
    "role_at_least",
    "set_password_hash",
    "set_user_disabled",
]


def role_at_least(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (viewer < operator < engineer < admin)."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        msg = f"user name {name!r}: 1 to 64 characters without spaces"
        raise StoreError(msg)
    return name


def get_user(name: str, *, session: Session) -> User | None:
    """The user called ``name``, or None."""
    return session.scalars(select(User).where(User.name == name)).first()


def _require_user(name: str, session: Session) -> User:
    user = get_user(name, session=session)
    if user is None:
        msg = f"there is no console user {name!r} (`defectscan users list` shows them)"
        raise StoreError(msg)
    return user


def add_user(name: str, *, password_hash: str, role: str, session: Session) -> User:
    """A new user; refuses a taken name or an unknown role."""
    name = _check_name(name)
    if role not in ROLES:
        msg = f"role {role!r}: use one of {', '.join(ROLES)}"
        raise StoreError(msg)
    if get_user(name, session=session) is not None:
        msg = f"console user {name!r} exists already (`defectscan users passwd` changes a password)"
        raise StoreError(msg)
    user = User(name=name, password_hash=password_hash, role=role, disabled=False, failed_logins=0)
    session.add(user)
    session.flush()
    return user


def list_users(*, session: Session) -> list[User]:
    """Every user, by name."""
    return list(session.scalars(select(User).order_by(User.name)))


def set_password_hash(name: str, password_hash: str, *, session: Session) -> User:
    """A new password hash; unlocks the account and ends its sessions."""
    user = _require_user(name, session)
    user.password_hash = password_hash
    user.failed_logins = 0
    user.locked_until = None
    revoke_user_sessions(user.id, session=session)
    return user


def set_user_disabled(name: str, disabled: bool, *, session: Session) -> User:
    """Disable (and log out) or enable a user."""
    user = _require_user(name, session)
    user.disabled = disabled
    if disabled:
        revoke_user_sessions(user.id, session=session)
    return user


@dataclass(frozen=True)
class LoginState:
    """What a failed login did to the account."""

    failed_logins: int
    locked_until: datetime | None


def note_failed_login(
    user: User, *, max_failures: int, lockout: timedelta, session: Session
) -> LoginState:
    """Count a bad password; the ``max_failures``-th in a row locks the account for ``lockout``."""
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins >= max_failures:
        user.locked_until = utcnow() + lockout
        user.failed_logins = 0
    session.flush()
    return LoginState(user.failed_logins, user.locked_until)


def note_login(user: User, *, session: Session) -> None:
    """A good password: the failure count starts again."""
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = utcnow()
    session.flush()


def create_session(
    user: User,
    *,
    token_hash: str,
    csrf_token: str,
    lifetime: timedelta,
    ip: str | None,
    session: Session,
) -> ConsoleSession:
    """A server-side session for ``user`` that expires after ``lifetime``."""
    now = utcnow()
    row = ConsoleSession(
        token_hash=token_hash,
        csrf_token=csrf_token,
        user_id=user.id,
        ip=(ip or "")[:64] or None,
        created_at=now,
        expires_at=now + lifetime,
    )
    session.add(row)
    session.flush()
    return row


def find_session(token_hash: str, *, session: Session) -> ConsoleSession | None:
    """The live session with this token hash: not expired, not revoked, its user enabled."""
    row = session.scalars(
        select(ConsoleSession).where(ConsoleSession.token_hash == token_hash)
    ).first()
    if row is None or row.revoked_at is not None or row.user.disabled:
        return None
    if row.expires_at <= utcnow():
        return None
    return row


def revoke_session(token_hash: str, *, session: Session) -> bool:
    """End one session (logout); False when there was none."""
    done = session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.token_hash == token_hash, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(getattr(done, "rowcount", 0))


def revoke_user_sessions(user_id: int, *, session: Session) -> int:
    """End every live session of a user; how many there were."""
    done = session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.user_id == user_id, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(getattr(done, "rowcount", 0) or 0)


def audit(
    action: str,
    *,
    who: str | None,
    ip: str | None,
    detail: dict[str, Any] | None = None,
    session: Session,
) -> AuditEntry:
    """Record one action: who, what, from where (the time is now)."""
    row = AuditEntry(who=who, action=action[:64], ip=(ip or "")[:64] or None, detail=detail)
    session.add(row)
    session.flush()
    return row


def list_audit(
    *,
    session: Session,
    actions: Sequence[str] = (),
    who: str | None = None,
    since: datetime | None = None,
    limit: int = 200,
) -> list[AuditEntry]:
    """Audit rows, newest first."""
    q = select(AuditEntry)
    if actions:
        q = q.where(AuditEntry.action.in_(list(actions)))
    if who:
        q = q.where(AuditEntry.who == who)
    if since is not None:
        q = q.where(AuditEntry.created_at >= _aware(since, "since"))
    return list(session.scalars(q.order_by(AuditEntry.id.desc()).limit(limit)))
