"""Health checks of a deployment: database, Redis, models, archive volume, Prefect API.

``defectscan health`` runs them and prints one line per check; the containers' healthchecks
call it. Checks are cheap and change nothing: the database is queried for its Alembic revision
(never upgraded), a model is loaded and runs one tiny tile, the archive gets a test file that
is deleted again. A check can pass with a warning (``warn``, exit code 0): Redis close to its
``maxmemory`` (``redis_memory_warn_share``), without a ``maxmemory``, or with an eviction policy
that could drop stream entries.

Redis is reached with the credentials of ``DEFECTSCAN_REDIS_URL``, like every monitor; the
Prefect API with ``PREFECT_API_AUTH_STRING`` when it is set (Prefect's basic authentication):
a wrong password fails the check instead of leaving the services to fail one by one.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from defectscan.config import ModelRef, ResolvedEngine, Settings, mask_url, with_redis_credentials
from defectscan.errors import DefectscanError

__all__ = [
    "CHECKS",
    "CheckResult",
    "check_archive",
    "check_database",
    "check_lines",
    "check_model",
    "check_prefect",
    "check_redis",
    "resolve_model",
    "run_checks",
]

logger = logging.getLogger(__name__)

#: Every check, in the order they run.
CHECKS: tuple[str, ...] = ("database", "redis", "model", "archive", "prefect", "lines")
#: Events the line monitors leave about their engine and their backlog (``lines`` reads them).
_LINE_EVENTS = ("engine_in_use", "engine_switch", "line_behind", "line_caught_up")
_GB = 1e9
_MB = 1024 * 1024
_PROBE_TILE = 32  # pixels: enough for the UNet's four poolings, cheap on any engine


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``ok``, or a one-line reason that says what to do.

    ``warning`` marks a check that passed but needs attention soon (it does not fail).
    """

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    warning: bool = False

    def line(self) -> str:
        """``ok   NAME  detail``, ``warn NAME  detail`` or ``FAIL NAME  detail``: one line."""
        label = "FAIL" if not self.ok else "warn" if self.warning else "ok  "
        return f"{label} {self.name:<10} {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return mask_url(text[0] if text else type(orig).__name__)


class _Warning(str):
    """A check's detail that passes with a warning."""


def _timed(name: str, fn: Callable[[], tuple[bool, str]]) -> CheckResult:
    started = time.perf_counter()
    try:
        ok, detail = fn()
    except DefectscanError as exc:
        ok, detail = False, mask_url(str(exc).splitlines()[0])
    except Exception as exc:  # a check reports any failure (engines, drivers) as its one line
        logger.debug("health check %s failed", name, exc_info=True)
        ok, detail = False, f"{type(exc).__name__}: {_first_line(exc)}"
    warning = ok and isinstance(detail, _Warning)
    return CheckResult(name, ok, str(detail), round(time.perf_counter() - started, 3), warning)


def _missing_sqlite_file(url: str) -> bool:
    """A SQLite URL whose file does not exist (connecting would create it: a check must not)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return False
    return not database.startswith("file:") and not Path(database).expanduser().is_file()


def check_database(url: str, *, timeout_s: float = 5.0, name: str = "database") -> CheckResult:
    """The database answers and its schema is at the code's migration head."""

    def run() -> tuple[bool, str]:
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory
        from sqlalchemy import NullPool
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import SQLAlchemyError

        from defectscan.store.db import alembic_config, make_engine

        shown = mask_url(url)
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"poolclass": NullPool}
        if _missing_sqlite_file(url):
            return False, f"{shown}: no database file; create it with `defectscan db upgrade`"
        if parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": max(1, round(timeout_s))}
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        engine = make_engine(url, **kwargs)
        try:
            with engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
        except SQLAlchemyError as exc:
            return False, f"{shown}: cannot connect: {_first_line(exc)}"
        finally:
            engine.dispose()
        if current != head:
            return False, (
                f"{shown}: schema at revision {current or 'none (empty)'}, code needs {head}: "
                "run `defectscan db upgrade`"
            )
        return True, f"{shown}: reachable, schema at head {head}"

    return _timed(name, run)


def check_redis(
    url: str,
    *,
    timeout_s: float = 5.0,
    name: str = "redis",
    memory_warn_share: float = 0.8,
    credentials_url: str | None = None,
) -> CheckResult:
    """Redis answers PING with our credentials, and has room: a warning at
    ``memory_warn_share`` of its ``maxmemory``, without one, or with an evicting policy.

    ``credentials_url`` (default ``DEFECTSCAN_REDIS_URL``) lends its user and password to a
    ``url`` that names none, as it does for every monitor.
    """

    def run() -> tuple[bool, str]:
        import redis

        if credentials_url is None:
            lender = os.environ.get("DEFECTSCAN_REDIS_URL")
        else:
            lender = credentials_url
        full = with_redis_credentials(url, lender)
        shown = mask_url(url)
        client = redis.Redis.from_url(
            full, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        try:
            client.ping()
            memory: Any = client.info("memory")
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            return False, (
                f"{shown}: Redis refused our credentials ({_first_line(exc)}): set the password "
                "in DEFECTSCAN_REDIS_URL (redis://:PASSWORD@HOST:6379/0)"
            )
        except redis.exceptions.RedisError as exc:
            return False, f"{shown}: no answer to PING: {_first_line(exc)}"
        finally:
            client.close()
        return True, _redis_memory(shown, memory, memory_warn_share)

    return _timed(name, run)


def _redis_memory(shown: str, memory: dict[str, Any], warn_share: float) -> str:
    """``PONG`` and the memory figures; a :class:`_Warning` when Redis may run out of room."""
    used = int(memory.get("used_memory") or 0)
    limit = int(memory.get("maxmemory") or 0)
    policy = str(memory.get("maxmemory_policy") or "noeviction")
    if limit <= 0:
        return _Warning(
            f"{shown}: PONG, but no maxmemory is set ({used / _MB:.0f} MB used): a backlog can "
            "take the host's memory; set maxmemory and maxmemory-policy noeviction "
            "(docker/compose.yaml does)"
        )
    share = used / limit
    figures = f"{used / _MB:.0f} of {limit / _MB:.0f} MB maxmemory ({share:.0%})"
    if policy != "noeviction":
        return _Warning(
            f"{shown}: PONG, {figures}, but maxmemory-policy {policy} evicts keys: stream "
            "entries (images) can vanish; set maxmemory-policy noeviction"
        )
    if share >= warn_share:
        return _Warning(
            f"{shown}: PONG, but {figures}, at or above redis_memory_warn_share="
            f"{warn_share:g}: the line monitors are behind or stopped (streams hold what is "
            "not yet acknowledged); start or scale out monitors, or raise maxmemory"
        )
    return f"{shown}: PONG, {figures}"


def resolve_model(ref: ModelRef, *, database_url: str | None) -> Path:
    """The checkpoint file of ``ref``: the file itself, or the registry champion's file."""
    if ref.kind == "file":
        assert ref.path is not None
        return ref.path
    what = f"champion of {ref.name!r}" if ref.name else "champion"
    if not database_url:
        msg = f"the model is the registry's {what} but no database is configured"
        raise DefectscanError(msg)
    from sqlalchemy import NullPool
    from sqlalchemy.exc import SQLAlchemyError

    from defectscan.store.db import make_engine, session_factory
    from defectscan.store.model_versions import get_champion

    if _missing_sqlite_file(database_url):
        msg = f"cannot look up the {what}: no database file; run `defectscan db upgrade`"
        raise DefectscanError(msg)
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with session_factory(engine)() as session:
            found = get_champion(session=session, name=ref.name)
            path = found.checkpoint_path if found is not None else None
            version = found.version if found is not None else None
    except SQLAlchemyError as exc:
        msg = (
            f"cannot look up the {what} in the registry ({_first_line(exc)}): "
            "check the database (see the database check)"
        )
        raise DefectscanError(msg) from exc
    finally:
        engine.dispose()
    if version is None:
        msg = (
            f"no {what} in the registry: train and promote one (`defectscan models promote`), "
            "or set a checkpoint file (DEFECTSCAN_MODEL_PATH or the line's `model:`)"
        )
        raise DefectscanError(msg)
    if not path:
        msg = f"the {what} ({version}) has no checkpoint file recorded in the registry"
        raise DefectscanError(msg)
    return Path(path)


def check_model(
    ref: ModelRef,
    *,
    engine: ResolvedEngine,
    database_url: str | None = None,
    name: str = "model",
) -> CheckResult:
    """The model's checkpoint exists, loads, and runs one tiny tile on the configured engine."""

    def run() -> tuple[bool, str]:
        path = resolve_model(ref, database_url=database_url)
        if not path.is_file():
            return False, f"{path}: no such checkpoint file (check the volume mount and path)"
        import numpy as np

        from defectscan.model.checkpoint import load_checkpoint
        from defectscan.model.engines import make_backend

        ckpt = load_checkpoint(path)
        spec = ckpt.spec
        backend = make_backend(
            engine.backend,
            ckpt.model,
            spec.activation,
            n_channels=spec.n_channels,
            tile=_PROBE_TILE,
            device=engine.device,
            precision=engine.precision,
        )
        probs = backend.infer(np.zeros((1, spec.n_channels, _PROBE_TILE, _PROBE_TILE), np.float32))
        if not np.isfinite(probs).all():
            return False, f"{path}: the model outputs NaN/inf on {backend.name}: retrain or export"
        return True, f"{path}: {ckpt.version} runs on {backend.name} ({backend.device})"

    return _timed(name, run)


def check_archive(path: Path, *, min_free_gb: float, name: str = "archive") -> CheckResult:
    """The archive folder exists (created if missing), is writable and has enough free space."""

    def run() -> tuple[bool, str]:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".health-", delete=True) as f:
                f.write(b"ok")
                f.flush()
        except OSError as exc:
            return False, (
                f"{path}: not writable ({exc.strerror or exc}): mount the archive volume "
                "read-write for the service's user"
            )
        free = shutil.disk_usage(path).free / _GB
        if free < min_free_gb:
            return False, (
                f"{path}: {free:.1f} GB free, below archive_min_free_gb={min_free_gb:g}: "
                "free space, lower archive.max_size_gb or max_age_days"
            )
        return True, f"{path}: writable, {free:.1f} GB free"

    return _timed(name, run)


def check_prefect(
    api_url: str,
    *,
    timeout_s: float = 5.0,
    name: str = "prefect",
    auth_string: str | None = None,
) -> CheckResult:
    """The Prefect API answers ``GET {api_url}/health`` and accepts our credentials.

    ``auth_string`` (default ``PREFECT_API_AUTH_STRING``, ``user:password``) is sent as basic
    authentication to ``GET {api_url}/admin/version``: a server behind authentication answers
    its health probe to anyone, so only this call shows that the credentials are right.
    """

    def run() -> tuple[bool, str]:
        base = api_url.rstrip("/")
        url = base + "/health"
        shown = mask_url(url)
        try:
            status, body = _get(url, timeout_s=timeout_s)
        except urllib.error.HTTPError as exc:
            return False, f"{shown}: HTTP {exc.code}: is PREFECT_API_URL the server's /api URL?"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return False, (
                f"{shown}: no answer ({reason}): start the Prefect server, or unset "
                "PREFECT_API_URL to run flows in-process"
            )
        if status != 200 or body not in ("true", '"true"'):
            return False, f"{shown}: unhealthy answer {status} {body[:60]!r}"
        secret = (
            auth_string if auth_string is not None else os.environ.get("PREFECT_API_AUTH_STRING")
        )
        try:
            _, version = _get(base + "/admin/version", timeout_s=timeout_s, auth=secret or None)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                how = "wrong" if secret else "missing"
                return False, (
                    f"{shown}: healthy, but the API refuses our {how} credentials (HTTP "
                    f"{exc.code}): set PREFECT_API_AUTH_STRING=user:password, the server's "
                    "PREFECT_SERVER_API_AUTH_STRING (or the proxy's account)"
                )
            return True, f"{shown}: healthy (version unknown: HTTP {exc.code})"
        except (urllib.error.URLError, OSError) as exc:
            return False, f"{shown}: healthy, but the API stopped answering ({exc})"
        return True, f"{shown}: healthy, Prefect {version.strip(chr(34))}"

    return _timed(name, run)


def _get(url: str, *, timeout_s: float, auth: str | None = None) -> tuple[int, str]:
    """``GET url``: status and the first 200 characters of the body."""
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(auth.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.status, response.read(200).decode(errors="replace").strip()


def run_checks(
    settings: Settings,
    *,
    only: Iterable[str] | None = None,
    prefect_api_url: str | None = None,
    timeout_s: float = 5.0,
) -> list[CheckResult]:
    """Run the checks in ``only`` (default: all that apply) for ``settings``.

    Redis is checked when it is configured (``DEFECTSCAN_REDIS_URL`` set, or a line reads a
    Redis stream), Prefect when ``PREFECT_API_URL`` is set (or ``prefect_api_url`` given),
    every distinct model and engine of the configured lines (the service-wide model when no
    line is configured).
    """
    wanted = set(CHECKS if only is None else only)
    unknown = sorted(wanted - set(CHECKS))
    if unknown:
        msg = f"unknown health checks {unknown}: choose from {', '.join(CHECKS)}"
        raise DefectscanError(msg)
    results: list[CheckResult] = []
    if "database" in wanted:
        results.append(check_database(settings.database_url, timeout_s=timeout_s))
    if "redis" in wanted:
        for url in _redis_urls(settings):
            results.append(
                check_redis(
                    url,
                    timeout_s=timeout_s,
                    memory_warn_share=settings.redis_memory_warn_share,
                    credentials_url=settings.redis_url,
                )
            )
    if "model" in wanted:
        for label, ref, engine in _models(settings):
            results.append(
                check_model(
                    ref, engine=engine, database_url=settings.database_url, name=f"model{label}"
                )
            )
    if "archive" in wanted:
        assert settings.archive_dir is not None  # Settings fills it in
        results.append(
            check_archive(settings.archive_dir, min_free_gb=settings.archive_min_free_gb)
        )
    if "prefect" in wanted:
        api = prefect_api_url or os.environ.get("PREFECT_API_URL")
        if api:
            results.append(check_prefect(api, timeout_s=timeout_s))
    if "lines" in wanted:
        lines = check_lines(settings.database_url, timeout_s=timeout_s)
        if lines is not None:
            results.append(lines)
    return results


def line_states(url: str, *, timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
    """Per line, from its monitor's events: the engine in use and whether it falls behind.

    ``{line: {"engine": ..., "engine_at": ..., "behind": bool, "behind_since": ...}}``;
    empty when no monitor has reported (or the database has no file yet).
    """
    from sqlalchemy import NullPool, select
    from sqlalchemy.engine import make_url
    from sqlalchemy.orm import Session

    from defectscan.store.db import make_engine
    from defectscan.store.schema import Event

    if _missing_sqlite_file(url):
        return {}
    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if make_url(url).get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": max(1, round(timeout_s))}
    engine = make_engine(url, **kwargs)
    try:
        with Session(engine) as session:
            events = session.scalars(
                select(Event)
                .where(Event.kind.in_(_LINE_EVENTS))
                .order_by(Event.created_at.desc(), Event.id.desc())
                .limit(1000)
            ).all()
            states: dict[str, dict[str, Any]] = {}
            for e in events:  # newest first: the first of each kind per line wins
                state = states.setdefault(e.line or "", {})
                details = e.details or {}
                if e.kind in ("engine_in_use", "engine_switch") and "engine" not in state:
                    state["engine"] = str(details.get("engine", "?"))
                    state["engine_at"] = e.created_at
                elif e.kind in ("line_behind", "line_caught_up") and "behind" not in state:
                    state["behind"] = e.kind == "line_behind"
                    state["behind_since"] = e.created_at
                    state["backlog"] = details.get("backlog")
    finally:
        engine.dispose()
    return states


def check_lines(url: str, *, timeout_s: float = 5.0, name: str = "lines") -> CheckResult | None:
    """The engine each line's monitor runs, and a warning for a line whose backlog grows.

    None when no monitor has reported yet (nothing to show).
    """
    try:
        states = line_states(url, timeout_s=timeout_s)
    except Exception:  # the database check says what is wrong with the database
        logger.debug("line states unavailable", exc_info=True)
        return None
    if not states:
        return None

    def run() -> tuple[bool, str]:
        parts = []
        behind = False
        for line, state in sorted(states.items()):
            text = f"{line or '(no line)'}: {state.get('engine', 'engine unknown')}"
            if state.get("behind"):
                behind = True
                since = state["behind_since"].strftime("%Y-%m-%d %H:%M")
                text += (
                    f", FALLING BEHIND since {since} UTC (backlog {state.get('backlog')}): "
                    "images arrive faster than it inspects them"
                )
            else:
                text += ", keeping up"
            parts.append(text)
        detail = "; ".join(parts)
        return True, _Warning(detail) if behind else detail

    return _timed(name, run)


def _redis_urls(settings: Settings) -> list[str]:
    urls: list[str] = []
    if "redis_url" in settings.model_fields_set:
        urls.append(settings.redis_url)
    for line in settings.lines.values():
        spec = line.source_spec
        if spec is not None and spec.kind == "redis":
            url = spec.redis_url_with_credentials(settings.redis_url)
            if url not in urls:
                urls.append(url)
    return urls


def _models(settings: Settings) -> list[tuple[str, ModelRef, ResolvedEngine]]:
    out: list[tuple[str, ModelRef, ResolvedEngine]] = []
    seen: set[tuple[ModelRef, ResolvedEngine]] = set()
    names: list[str | None] = list(settings.lines) or [None]
    for line in names:
        key = (settings.model_for(line), settings.engine_for(line))
        if key in seen:
            continue
        seen.add(key)
        out.append((f"[{line}]" if line else "", *key))
    return out
