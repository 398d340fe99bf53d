"""Image sources: a camera folder and a Redis stream, behind one small protocol.

``claim(n)`` hands out records; each is settled once after its row is committed: ``ack``
(inspected), ``reject`` (quarantined with its error row) or ``release`` (processing failed,
deliver again; ``charge=False`` when the plant, not the image, failed). ``renew`` keeps the
claim of a long batch. Sources know nothing of torch or the database.

The package is lazy: ``redis`` and ``watchdog`` are imported only when a source that needs them
is used. :func:`open_source` builds a source from a spec string:

- ``folder:PATH``: a camera folder (:class:`~defectscan.sources.folder.FolderSource`);
- ``redis://HOST:PORT/DB?stream=NAME[&group=G&consumer=C]`` (or ``rediss://``): a Redis stream
  (:class:`~defectscan.sources.redis_stream.RedisStreamSource`); ``claim_idle_ms``,
  ``max_deliveries``, ``block_ms``, ``dead_max_len``, ``max_file_bytes`` and
  ``consumer_idle_ms`` tune the source, other query parameters go to the Redis client
  (``socket_timeout=...``);
- ``redis:NAME``: the stream ``NAME`` on the server ``redis_url`` (the settings' Redis).

Credentials come only from ``redis_url`` (``DEFECTSCAN_REDIS_URL``): a Redis spec that names no
user or password borrows that URL's. A spec with a password of its own (``user:PASSWORD@``,
``?password=``) is refused: it would show in process lists, flow-run parameters and logs.
The default consumer name is stable: host, line and camera.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from defectscan.config import mask_url, url_secrets, with_redis_credentials
from defectscan.errors import ConfigError
from defectscan.sources.base import ImageRecord, Source, SourceFaultError

if TYPE_CHECKING:
    from defectscan.sources.folder import FolderSource
    from defectscan.sources.redis_groups import trim_stream
    from defectscan.sources.redis_producer import StreamFullError, enqueue
    from defectscan.sources.redis_stream import RedisStreamSource

__all__ = [
    "FolderSource",
    "ImageRecord",
    "RedisStreamSource",
    "Source",
    "SourceFaultError",
    "StreamFullError",
    "enqueue",
    "open_source",
    "trim_stream",
]

_LAZY = {
    "FolderSource": "defectscan.sources.folder",
    "RedisStreamSource": "defectscan.sources.redis_stream",
    "StreamFullError": "defectscan.sources.redis_producer",
    "enqueue": "defectscan.sources.redis_producer",
    "trim_stream": "defectscan.sources.redis_groups",
}
_INT_PARAMS = (
    "claim_idle_ms",
    "max_deliveries",
    "block_ms",
    "dead_max_len",
    "max_file_bytes",
    "consumer_idle_ms",
)
_SOURCE_PARAMS = ("stream", "group", "consumer", *_INT_PARAMS)


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
    consumer: str | None = None,
    redis_url: str | None = None,
    root: str | None = None,
    **kw: Any,
) -> Source:
    """The source a spec string names; ``kw`` goes to the source's constructor.

    ``root`` is the folder by-path Redis messages are relative to (unused for folders).
    ``consumer`` names the Redis consumer (default: the spec's ``consumer=``, else host, line
    and camera). ``redis_url`` (default ``DEFECTSCAN_REDIS_URL``) is the server of
    ``redis:NAME`` and lends its credentials to a ``redis://`` spec that names none.
    """
    if redis_url is None:
        redis_url = os.environ.get("DEFECTSCAN_REDIS_URL")
    secrets = url_secrets(spec)
    if secrets:
        msg = (
            f"source {mask_url(spec)} holds a password ({', '.join(secrets)}): a password on a "
            "command line or in a flow parameter is visible to anyone who can list processes "
            "or read runs. Drop it from the source and set DEFECTSCAN_REDIS_URL="
            "redis://:PASSWORD@HOST:PORT/DB in the environment: every Redis source borrows its "
            "credentials"
        )
        raise ConfigError(msg)
    scheme, sep, rest = spec.partition(":")
    scheme = scheme.lower()
    if sep and scheme == "folder":
        if not rest:
            msg = "source spec 'folder:' names no folder: write folder:/path/to/camera"
            raise ConfigError(msg)
        from defectscan.sources.folder import FolderSource

        return FolderSource(rest, line=line, camera=camera, **kw)
    if consumer is not None:
        kw["consumer"] = consumer
    if sep and scheme in ("redis", "rediss") and rest.startswith("//"):
        full = with_redis_credentials(spec, redis_url)
        return _open_redis(full, line=line, camera=camera, root=root, **kw)
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
        msg = f"Redis source {mask_url(url)} names no stream: add ?stream=NAME (one per line)"
        raise ConfigError(msg)
    client_query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in _SOURCE_PARAMS])
    client_url = urlunsplit(parts._replace(query=client_query))
    try:
        client = redis.Redis.from_url(
            client_url, decode_responses=False, health_check_interval=30, socket_keepalive=True
        )
    except (ValueError, TypeError) as exc:
        msg = f"invalid Redis URL {mask_url(url)}: {exc}"
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
                msg = f"Redis source {mask_url(url)}: {key} must be a whole number"
                raise ConfigError(msg) from None
    options.update(kw)
    try:
        return RedisStreamSource(client, stream, line=line, camera=camera, root=root, **options)
    except BaseException:
        client.close()
        raise
