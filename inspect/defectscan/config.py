"""Service settings (``DEFECTSCAN_*`` environment, optional YAML file) and per-line config.

Model and preprocessing settings do not live here: they travel with the weights, in the
checkpoint metadata (:class:`defectscan.model.spec.ModelSpec`). These settings only say where
things are and how the service runs; a value set here overrides the checkpoint's default.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

__all__ = ["LineConfig", "Settings", "get_settings"]

Device = Literal["auto", "cpu", "cuda"] | str
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class LineConfig(BaseModel):
    """Per production line overrides of the model's post-processing defaults."""

    model_config = {"frozen": True}

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


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="DEFECTSCAN_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    var_dir: Path = Path("var")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty means a SQLite file under var_dir"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    model_path: Path | None = None
    device: Device = "auto"
    precision: Precision = "auto"
    batch_size: int = Field(default=8, ge=1)
    tile_size: int | None = Field(default=None, ge=16)
    overlap: int | None = Field(default=None, ge=0)
    max_pixels: int = Field(default=80_000_000, ge=1, description="decompression-bomb guard")
    lines: dict[str, LineConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.var_dir / 'defectscan.db').as_posix()}"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init kwargs win over the environment, which wins over ``DEFECTSCAN_CONFIG`` YAML."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = os.environ.get("DEFECTSCAN_CONFIG")
        if yaml_path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=Path(yaml_path)))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
