"""Image sources: a camera folder and a Redis stream, behind one small protocol.

``claim(n)`` hands out records; each is settled once after its row is committed: ``ack``
(inspected), ``reject`` (quarantined with its error row) or ``release`` (processing failed,
deliver again). Sources know nothing of torch or the database.

The package is lazy: ``redis`` and ``watchdog`` are imported only when a source that needs them
is used. :func:`open_source` builds a source from a spec string:

- ``folder:PATH``: a camera folder (:class:`~defectscan.sources.folder.FolderSource`);
- ``redis://HOST:PORT/DB?stream=NAME[&group=G&consumer=C]`` (or ``rediss://``): a Redis stream
  (:class:`~defectscan.sources.redis_stream.RedisStreamSource`); ``claim_idle_ms``,
  ``max_deliveries`` and ``block_ms`` tune the source, other query parameters go to the Redis
  client (``socket_timeout=...``);
- ``redis:NAME``: the stream ``NAME`` on the server ``redis_url`` (the settings' Redis).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from defectscan.errors import ConfigError
from defectscan.sources.base import ImageRecord, Source

if TYPE_CHECKING:
    from defectscan.sources.folder import FolderSource
    from defectscan.sources.redis_stream import RedisStreamSource, enqueue, trim_stream

__all__ = [
    "FolderSource",
    "ImageRecord",
    "RedisStreamSource",
    "Source",
    "enqueue",
    "open_source",
    "trim_stream",
]

_LAZY = {
    "FolderSource": "defectscan.sources.folder",
    "RedisStreamSource": "defectscan.sources.redis_stream",
    "enqueue": "defectscan.sources.redis_stream",
    "trim_stream": "defectscan.sources.redis_stream",
}
_SOURCE_PARAMS = ("stream", "group", "consumer", "claim_idle_ms", "max_deliveries", "block_ms")
_INT_PARAMS = ("claim_idle_ms", "max_deliveries", "block_ms")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)


def open_source(
    spec: str,
    *,
    line: str | None = None,
    camera: str | None = None,
    redis_url: str | None = None,
    root: str | None = None,
    **kw: Any,
) -> Source:
    """The source a spec string names; ``kw`` goes to the source's constructor.

    ``root`` is the folder by-path Redis messages are relative to (unused for folders).
    """
    scheme, sep, rest = spec.partition(":")
    scheme = scheme.lower()
    if sep and scheme == "folder":
        if not rest:
            msg = "source spec 'folder:' names no folder: write folder:/path/to/camera"
            raise ConfigError(msg)
        from defectscan.sources.folder import FolderSource

        return FolderSource(rest, line=line, camera=camera, **kw)
    if sep and scheme in ("redis", "rediss") and rest.startswith("//"):
        return _open_redis(spec, line=line, camera=camera, root=root, **kw)
    if sep and scheme == "redis" and rest:
        if redis_url is None:
            msg = (
                f"source spec {spec!r} names a stream but no Redis server is configured: "
                "set the Redis URL in the settings or write "
                f"redis://HOST:PORT/DB?stream={rest}"
            )
            raise ConfigError(msg)
        url = urlsplit(redis_url)
        query = [(k, v) for k, v in parse_qsl(url.query) if k != "stream"]
        query.append(("stream", rest))
        full = urlunsplit(url._replace(query=urlencode(query)))
        return _open_redis(full, line=line, camera=camera, root=root, **kw)
    msg = (
        f"unknown image source {spec!r}: use folder:PATH for a camera folder, "
        "redis://HOST:PORT/DB?stream=NAME for a Redis stream, or redis:NAME for a stream on "
        "the configured Redis server"
    )
    raise ConfigError(msg)


def _open_redis(
    url: str, *, line: str | None, camera: str | None, root: str | None, **kw: Any
) -> Source:
    import redis

    from defectscan.sources.redis_stream import RedisStreamSource

    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    stream = params.get("stream")
    if not stream:
        msg = f"Redis source {_redact(url)} names no stream: add ?stream=NAME (one per line)"
        raise ConfigError(msg)
    client_query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in _SOURCE_PARAMS])
    client_url = urlunsplit(parts._replace(query=client_query))
    try:
        client = redis.Redis.from_url(
            client_url, decode_responses=False, health_check_interval=30, socket_keepalive=True
        )
    except (ValueError, TypeError) as exc:
        msg = f"invalid Redis URL {_redact(url)}: {exc}"
        raise ConfigError(msg) from exc
    options: dict[str, Any] = {"owns_client": True}
    for key in ("group", "consumer"):
        if params.get(key):
            options[key] = params[key]
    for key in _INT_PARAMS:
        if params.get(key):
            try:
                options[key] = int(params[key])
            except ValueError:
                msg = f"Redis source {_redact(url)}: {key} must be a whole number"
                raise ConfigError(msg) from None
    options.update(kw)
    try:
        return RedisStreamSource(client, stream, line=line, camera=camera, root=root, **options)
    except BaseException:
        client.close()
        raise


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
