"""Service settings (``DEFECTSCAN_*`` environment, optional YAML plant file) and per-line config.

Model and preprocessing settings do not live here: they travel with the weights, in the
checkpoint metadata (:class:`defectscan.model.spec.ModelSpec`). These settings say where
things are, how the service runs and how each production line differs; a value set here
overrides the checkpoint's default.

The plant file (``DEFECTSCAN_CONFIG``, or ``defectscan config check FILE``) describes the
lines, their cameras, sources, models, engines, thresholds, verdict rules, archive policy and
schedules. The environment wins over the file (``DEFECTSCAN_LINES__LINE3__ENGINE__DEVICE``
reaches into a line). Secrets never live in the file: a password inside a URL there is an
error (``user:PASSWORD@`` or a query parameter like ``?password=``); set
``DEFECTSCAN_DATABASE_URL`` / ``DEFECTSCAN_REDIS_URL`` in the environment instead. Every Redis
connection takes its credentials from ``DEFECTSCAN_REDIS_URL`` when its own URL names none
(:func:`with_redis_credentials`).
Finding, reading and checking the plant file live in :mod:`defectscan.plant_file`;
:class:`ConfigIssue` and :func:`settings_file` are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from defectscan.errors import ConfigError
from defectscan.masking import mask_secrets
from defectscan.plant_file import (
    ConfigIssue,
    PlantFileSource,
    check_plant_file,
    settings_file,
    url_secrets,
    using_plant_file,
)

__all__ = [
    "ArchiveConfig",
    "ConfigIssue",
    "ConsoleConfig",
    "DriftConfig",
    "EngineConfig",
    "LineConfig",
    "ModelRef",
    "ResolvedEngine",
    "Settings",
    "SourceSpec",
    "check_config_file",
    "get_settings",
    "load_settings",
    "mask_url",
    "parse_model_ref",
    "parse_source",
    "settings_file",
    "url_secrets",
    "with_redis_credentials",
]

Device = Literal["auto", "cpu", "cuda"] | str
Precision = Literal["auto", "fp32", "bf16", "fp16"]
BackendName = Literal["auto", "torch", "openvino", "onnxruntime"]
LogFormat = Literal["text", "json"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pt")


def _check_device(value: str | None) -> str | None:
    if value is not None and not _DEVICE_RE.match(value):
        msg = f"device {value!r}: use auto, cpu, cuda or cuda:N"
        raise ValueError(msg)
    return value


def _check_cron(value: str | None) -> str | None:
    if value is None:
        return None
    from cronsim import CronSim, CronSimError

    try:
        CronSim(value, datetime(2026, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        msg = (
            f"{value!r} is not a cron schedule ({exc}); use five fields "
            "'minute hour day-of-month month day-of-week', e.g. '0 2 * * *' for 02:00 daily"
        )
        raise ValueError(msg) from None
    return value


# --------------------------------------------------------------------------- sources, models


@dataclass(frozen=True)
class SourceSpec:
    """Where a line's images come from: a camera folder, or a Redis stream.

    ``text`` is the spec as written, the form ``defectscan monitor --source`` and
    :func:`defectscan.sources.open_source` take.
    """

    text: str
    kind: Literal["folder", "redis"]
    path: Path | None = None
    url: str | None = None
    stream: str | None = None

    def redis_url_with_credentials(self, settings_redis_url: str) -> str:
        """This source's Redis server URL, with the credentials of ``DEFECTSCAN_REDIS_URL``.

        The plant file never holds a password, so a line's ``redis://HOST:PORT/DB`` borrows the
        user and password of the environment's Redis URL when it names none itself;
        ``redis:NAME`` is a stream on that server.
        """
        if self.kind != "redis":
            msg = "a folder source has no Redis URL"
            raise ConfigError(msg)
        if self.url is None:
            return settings_redis_url
        return with_redis_credentials(self.url, settings_redis_url)


def with_redis_credentials(url: str, credentials_url: str | None) -> str:
    """``url`` with the user and password of ``credentials_url`` (``DEFECTSCAN_REDIS_URL``).

    A URL that names its own user or password, or a ``credentials_url`` without any, leaves
    ``url`` as it is. Only the user info is borrowed: host, database and query stay ``url``'s.
    """
    if not credentials_url:
        return url
    try:
        own = urlsplit(url)
        env = urlsplit(credentials_url)
        if own.username or own.password or not (env.username or env.password):
            return url
    except ValueError:
        return url
    auth = env.netloc.rsplit("@", 1)[0]
    return urlunsplit(own._replace(netloc=f"{auth}@{own.netloc}"))


def parse_source(text: str) -> SourceSpec:
    """``folder:PATH``, ``redis://HOST:PORT/DB?stream=NAME`` (``rediss://``) or ``redis:NAME``.

    ``redis:NAME`` is the stream NAME on the server of ``DEFECTSCAN_REDIS_URL``; a full URL
    may add ``group=`` and ``consumer=`` to its query.
    """
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if sep and scheme == "folder":
        if not rest:
            msg = f"source {text!r} names no folder: write folder:/data/line3/camera"
            raise ConfigError(msg)
        return SourceSpec(text=text, kind="folder", path=Path(rest))
    if sep and scheme in ("redis", "rediss") and rest.startswith("//"):
        parts = urlsplit(text)
        streams = parse_qs(parts.query).get("stream", [])
        if len(streams) != 1 or not streams[0]:
            msg = (
                f"source {mask_url(text)!r} names no stream: "
                "write redis://HOST:6379/0?stream=line3-images"
            )
            raise ConfigError(msg)
        url = urlunsplit(parts._replace(query=""))
        return SourceSpec(text=text, kind="redis", url=url, stream=streams[0])
    if sep and scheme == "redis" and rest:
        return SourceSpec(text=text, kind="redis", stream=rest)
    msg = (
        f"source {mask_url(text)!r}: use folder:PATH, redis://HOST:PORT/DB?stream=NAME, "
        "or redis:NAME (a stream on DEFECTSCAN_REDIS_URL's server)"
    )
    raise ConfigError(msg)


@dataclass(frozen=True)
class ModelRef:
    """A model to serve: a checkpoint file, or the registry's champion (of one model name)."""

    kind: Literal["file", "champion"]
    path: Path | None = None
    name: str | None = None

    def __str__(self) -> str:
        """The form ``defectscan monitor --model`` takes."""
        if self.kind == "file":
            return str(self.path)
        return f"champion:{self.name}" if self.name else "champion"


def parse_model_ref(text: str) -> ModelRef:
    """``champion`` (any name), ``champion:NAME``, or a checkpoint file path."""
    if not text.strip():
        msg = "model is empty: give a checkpoint file, 'champion' or 'champion:NAME'"
        raise ConfigError(msg)
    if text == "champion":
        return ModelRef(kind="champion")
    if text.startswith("champion:"):
        return ModelRef(kind="champion", name=text.split(":", 1)[1] or None)
    if not text.endswith(_MODEL_FILE_SUFFIXES):
        msg = (
            f"model {text!r}: give a checkpoint file (.safetensors, or a seed .pth/.pt), "
            "'champion' or 'champion:NAME' (the registry's champion of that model name)"
        )
        raise ConfigError(msg)
    return ModelRef(kind="file", path=Path(text))


def mask_url(url: str) -> str:
    """``url`` with its password and secret query values replaced by ``***`` (safe to show).

    Text that is not a single URL (an error message quoting one) is masked the same way.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return mask_secrets(url)
    if password:
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        url = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return mask_secrets(url)


# --------------------------------------------------------------------------- models


class EngineConfig(BaseModel):
    """How a line runs its model; None inherits the service-wide setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: BackendName | None = None
    device: str | None = Field(default=None, description="auto, cpu, cuda or cuda:N")
    precision: Precision | None = None
    batch_size: int | None = Field(default=None, ge=1, description="tiles per inference batch")
    auto_int8: bool | None = Field(
        default=None, description="quantise to INT8 from the line's images (backend auto)"
    )

    _device = field_validator("device")(_check_device)


@dataclass(frozen=True)
class ResolvedEngine:
    """A line's engine settings with the service-wide defaults filled in."""

    backend: BackendName
    device: str
    precision: Precision
    batch_size: int
    auto_int8: bool = True


class ArchiveConfig(BaseModel):
    """What the image archive keeps (fails always) and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_pass_share: float = Field(
        default=0.02, ge=0.0, le=1.0, description="share of passed parts kept (random sample)"
    )
    near_threshold_margin: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="a pass whose highest defect score is this close to its threshold is kept",
    )
    max_age_days: float | None = Field(
        default=90.0, gt=0, description="images older than this are deleted (None: never)"
    )
    max_size_gb: float | None = Field(
        default=50.0, gt=0, description="oldest images go first above this size (None: no cap)"
    )
    keep_rejected: bool = Field(default=True, description="keep inputs that were rejected")


class ConsoleConfig(BaseModel):
    """The operator console (``defectscan console``): where it listens, how logins behave."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", description="address the console listens on")
    port: int = Field(default=8080, ge=1, le=65535, description="port the console listens on")
    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30, description="a login lasts this long (then log in again)"
    )
    secure_cookies: Literal["auto", "always", "never"] = Field(
        default="auto", description="Secure flag on the session cookie (auto: when on https)"
    )
    max_failed_logins: int = Field(
        default=5, ge=1, description="bad passwords in a row that lock an account"
    )
    lockout_minutes: float = Field(default=15.0, gt=0, description="how long a lock lasts")
    trusted_user_header: str | None = Field(
        default=None,
        description="single sign-on: a header (e.g. X-Remote-User) naming the user, set by a "
        "reverse proxy; off (None) by default, and only believed from trusted_proxies",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="client addresses whose trusted_user_header and X-Forwarded-* are believed",
    )


class DriftConfig(BaseModel):
    """Drift monitoring, the review queue it feeds, and the retrain it may trigger (issue 18).

    ``drift: true`` / ``drift: false`` in a plant file still work: they set ``enabled``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        default=True,
        description="monitors track drift per camera (features of the same pass) once a "
        "reference is built with `defectscan drift reference build`",
    )
    review_budget: int = Field(
        default=150, ge=1, description="images the review queue takes per line and day"
    )
    review_schedule: str = Field(
        default="30 2 * * *", description="cron of the review-queue fill (the past 24 hours)"
    )
    review_expiry_hours: float = Field(
        default=72.0, gt=0, description="a queued image waits this long for a reviewer"
    )
    novelty_images: int = Field(
        default=300,
        ge=0,
        description="archived images per camera scored for novelty at each fill (0: none)",
    )
    retrain_min_reviews: int = Field(
        default=200, ge=1, description="reviewed post-drift images a drift retrain waits for"
    )
    retrain_min_per_class: int = Field(
        default=20, ge=0, description="...and at least this many for each affected class"
    )
    retrain_delay_minutes: float = Field(
        default=120.0,
        ge=0,
        description="a drift retrain is scheduled this far ahead (an engineer may cancel it)",
    )
    reference_min_images: int = Field(
        default=3000,
        ge=50,
        description="images a new champion's reference is built from (it waits until then)",
    )

    _cron = field_validator("review_schedule")(_check_cron)

    def __bool__(self) -> bool:
        return self.enabled

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {"enabled": value}
        return value


class LineConfig(BaseModel):
    """One production line: cameras, source, model, engine and post-processing overrides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    cameras: list[str] = Field(default_factory=list)
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="class name -> probability threshold (sigmoid)"
    )
    min_area: dict[str, int] = Field(
        default_factory=dict, description="class name -> smallest defect kept, in pixels"
    )
    fail_area: dict[str, int] = Field(
        default_factory=dict,
        description="class name -> smallest defect that fails the part (default: any kept defect)",
    )
    pass_classes: list[str] = Field(
        default_factory=list,
        description="classes recorded but never failing the part (cosmetic defects)",
    )
    source: str | None = Field(
        default=None, description="folder:PATH, redis://HOST:PORT/DB?stream=NAME or redis:NAME"
    )
    model: str | None = Field(
        default=None,
        description="checkpoint file, 'champion' or 'champion:NAME' (default: Settings.model_path, "
        "else the champion)",
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    tile_size: int | None = Field(default=None, ge=16)
    overlap: int | None = Field(default=None, ge=0)
    archive: ArchiveConfig | None = Field(
        default=None, description="this line's archive policy (default: Settings.archive)"
    )
    batch_schedule: str | None = Field(
        default=None, description="cron schedule of the batch inspection of this line's backlog"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of this line's monitor /metrics (default: Settings.metrics_port; "
        "0: none); give each line on a host its own",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0.0 <= v <= 1.0}
        if bad:
            msg = f"thresholds must be probabilities in [0, 1], got {bad}"
            raise ValueError(msg)
        return value

    @field_validator("min_area", "fail_area")
    @classmethod
    def _areas_non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            msg = f"areas are pixel counts >= 0, got {bad}"
            raise ValueError(msg)
        return value

    @field_validator("source")
    @classmethod
    def _valid_source(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_source(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("model")
    @classmethod
    def _valid_model(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_model_ref(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    _cron = field_validator("batch_schedule")(_check_cron)

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> LineConfig:
        if (
            self.tile_size is not None
            and self.overlap is not None
            and self.overlap >= self.tile_size
        ):
            msg = f"overlap {self.overlap} must be smaller than the tile size {self.tile_size}"
            raise ValueError(msg)
        return self

    @property
    def source_spec(self) -> SourceSpec | None:
        """The parsed ``source`` (None when the line names none)."""
        return parse_source(self.source) if self.source else None


class Settings(BaseSettings):
    """Everything the service reads from its environment and the plant file."""

    model_config = SettingsConfigDict(
        env_prefix="DEFECTSCAN_",
        env_nested_delimiter="__",
        # A misspelt key in the plant file is an error, not a silently ignored setting.
        extra="forbid",
    )

    var_dir: Path = Path("var")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty means a SQLite file under var_dir"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_memory_warn_share: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="`defectscan health` warns when Redis uses this share of its maxmemory",
    )
    stream_max_len: int = Field(
        default=10_000,
        ge=1,
        description="entries a stream may hold before `enqueue` waits for the consumers (cap)",
    )
    model_path: Path | None = None
    backend: BackendName = "auto"
    device: Device = "auto"
    precision: Precision = "auto"
    batch_size: int = Field(default=8, ge=1)
    auto_int8: bool = Field(
        default=True,
        description="a monitor on backend auto (CPU) quantises its model to INT8 from the "
        "line's own images in the background and switches to it when faster",
    )
    int8_calibration_images: int = Field(
        default=24, ge=2, description="line images INT8 is calibrated on"
    )
    int8_parity_images: int = Field(
        default=8, ge=1, description="other line images INT8 parity is checked on"
    )
    int8_parity_mean_abs: float | None = Field(
        default=None,
        ge=0,
        description="largest mean probability difference INT8 may show (default 0.02, as export)",
    )
    int8_min_speedup: float = Field(
        default=1.0,
        ge=0,
        description="INT8 replaces the running engine only when this many times as fast",
    )
    int8_calibration_tiles: int = Field(
        default=96,
        ge=8,
        description="tiles of the calibration images NNCF collects its ranges on (the cost of "
        "quantising grows with it)",
    )
    background_threads: int = Field(
        default=1, ge=1, description="threads (and cores) of background engine exports"
    )
    background_nice: int = Field(
        default=8,
        ge=0,
        le=19,
        description="how much lower background engine jobs run than inspection (their "
        "niceness); on a saturated 2-core line a niced job alone still took about 0.3 of a "
        "core at 8, hence background_cpu_share",
    )
    background_cpu_share: float = Field(
        default=0.15,
        ge=0,
        description="cores a background engine job may use while its line inspects (held "
        "with SIGSTOP past it; free while the line is idle); 0: no limit beyond its niceness",
    )
    background_timeout_s: float = Field(
        default=1800.0,
        ge=10.0,
        description="a background engine job running longer is stopped; the line keeps its "
        "engine and the job is tried again when the monitor restarts",
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig,
        description="drift per camera, the review queue and drift retrains (true/false: on/off)",
    )
    tile_size: int | None = Field(default=None, ge=16)
    overlap: int | None = Field(default=None, ge=0)
    max_pixels: int = Field(default=80_000_000, ge=1, description="decompression-bomb guard")
    log_format: LogFormat = "text"
    metrics_addr: str = Field(default="127.0.0.1", description="where /metrics listens")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="0: no /metrics")
    archive_dir: Path | None = Field(default=None, description="default: var_dir/archive")
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    archive_min_free_gb: float = Field(
        default=1.0, ge=0, description="`defectscan health` fails below this much free space"
    )
    retrain_schedule: str | None = Field(
        default=None, description="cron schedule of scheduled retraining (None: operator only)"
    )
    retrain_data: Path | None = Field(
        default=None,
        description="base dataset of retraining (images/ + masks/); reviews are added to it",
    )
    retrain_recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="training options of retraining (TrainConfig fields, e.g. epochs, lr)",
    )
    batch_roots: list[Path] = Field(
        default_factory=list,
        description="folders batch inputs and reports may lie under, besides var_dir "
        "(empty: the working directory)",
    )
    lines: dict[str, LineConfig] = Field(default_factory=dict)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)

    _device = field_validator("device")(_check_device)
    _cron = field_validator("retrain_schedule")(_check_cron)

    @field_validator("lines", mode="before")
    @classmethod
    def _line_names_from_keys(cls, value: Any) -> Any:
        # `lines: {line3: {...}}` needs no `name: line3` inside; a different name is an error.
        if not isinstance(value, Mapping):
            return value
        out: dict[Any, Any] = {}
        for key, line in value.items():
            if isinstance(line, Mapping):
                line = dict(line)
                line.setdefault("name", key)
            elif line is None:
                line = {"name": key}
            out[key] = line
        return out

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.var_dir / 'defectscan.db').as_posix()}"
        if self.archive_dir is None:
            self.archive_dir = self.var_dir / "archive"
        for key, line in self.lines.items():
            if line.name != key:
                msg = f"lines.{key} has name {line.name!r}: drop `name` or make it {key!r}"
                raise ValueError(msg)
        return self

    def line(self, name: str | None) -> LineConfig | None:
        """The configuration of line ``name`` (None when it has none)."""
        return self.lines.get(name) if name else None

    def engine_for(self, line: str | None = None) -> ResolvedEngine:
        """The engine line ``line`` runs: its own settings over the service-wide ones."""
        cfg = self.line(line)
        engine = cfg.engine if cfg else EngineConfig()
        return ResolvedEngine(
            backend=engine.backend or self.backend,
            device=engine.device or self.device,
            precision=engine.precision or self.precision,
            batch_size=engine.batch_size or self.batch_size,
            auto_int8=self.auto_int8 if engine.auto_int8 is None else engine.auto_int8,
        )

    def tiling_for(
        self, line: str | None = None, *, tile_size: int | None = None, overlap: int | None = None
    ) -> tuple[int | None, int | None]:
        """``(tile_size, overlap)``: given values, else the line's, else the service-wide ones.

        None left over means the checkpoint's own default.
        """
        cfg = self.line(line)
        if cfg is not None:
            tile_size = tile_size if tile_size is not None else cfg.tile_size
            overlap = overlap if overlap is not None else cfg.overlap
        tile_size = tile_size if tile_size is not None else self.tile_size
        overlap = overlap if overlap is not None else self.overlap
        return tile_size, overlap

    def model_for(self, line: str | None = None) -> ModelRef:
        """The model line ``line`` serves: its own, else ``model_path``, else the champion."""
        cfg = self.line(line)
        if cfg and cfg.model:
            return parse_model_ref(cfg.model)
        if self.model_path is not None:
            return ModelRef(kind="file", path=self.model_path)
        return ModelRef(kind="champion")

    def archive_for(self, line: str | None = None) -> ArchiveConfig:
        """The archive policy of line ``line`` (the service-wide one when it sets none)."""
        cfg = self.line(line)
        return cfg.archive if cfg and cfg.archive else self.archive

    def masked(self) -> dict[str, Any]:
        """The settings as plain JSON data with every URL password replaced by ``***``."""
        masked = _mask_strings(self.model_dump(mode="json"))
        assert isinstance(masked, dict)
        return masked

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init kwargs win over the environment, which wins over the YAML plant file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = settings_file()
        if yaml_path is not None:
            sources.append(PlantFileSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


# --------------------------------------------------------------------------- loading, checking


def load_settings(config_file: str | Path | None = None) -> Settings:
    """Settings from the environment and a plant file (default: ``DEFECTSCAN_CONFIG``).

    Raises :class:`ConfigError` listing every problem with its location.
    """
    path = Path(config_file) if config_file is not None else settings_file()
    if path is not None:
        issues = check_config_file(path)
        if issues:
            listed = "\n".join(f"  {issue}" for issue in issues)
            msg = (
                f"plant file {path} has {len(issues)} error(s):\n{listed}\n"
                f"run `defectscan config check {path}` after fixing them"
            )
            raise ConfigError(msg)
    try:
        with using_plant_file(path):
            return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        msg = f"invalid DEFECTSCAN_* environment settings: {problems}"
        raise ConfigError(msg) from None


def _mask_strings(data: Any) -> Any:
    """``data`` (JSON-like) with every string's URL secrets masked."""
    if isinstance(data, str):
        return mask_url(data)
    if isinstance(data, dict):
        return {key: _mask_strings(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_mask_strings(value) for value in data]
    return data


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def check_config_file(path: str | Path) -> list[ConfigIssue]:
    """Every problem in plant file ``path``, each with its location; empty when it is valid.

    The file is checked on its own: the environment neither hides nor causes an error.
    """
    return check_plant_file(path, Settings)
