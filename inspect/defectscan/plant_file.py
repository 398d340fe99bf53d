"""The YAML plant file: where it is, how Settings reads it, and the check of every problem in it.

:func:`check_plant_file` reports each problem with its YAML line and dotted key path (what
``defectscan config check FILE`` prints); it takes the settings model to validate against, so
that this module sits below :mod:`defectscan.config`, which passes its ``Settings``.
Secrets never live in the file: a password anywhere inside a URL there (``user:PASSWORD@``, or a
query parameter such as ``?password=``), in any setting, is an error, whether the file is checked
or read as a settings source (:class:`PlantFileSource`). :func:`url_secrets` is that test.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, YamlConfigSettingsSource

from defectscan.errors import ConfigError
from defectscan.masking import is_secret_key

__all__ = [
    "SECRET_SETTINGS",
    "ConfigIssue",
    "PlantFileSource",
    "check_plant_file",
    "settings_file",
    "url_secrets",
    "using_plant_file",
]

# Settings whose URL may carry a password: only the environment may set one.
SECRET_SETTINGS: Mapping[str, str] = {
    "database_url": "DEFECTSCAN_DATABASE_URL",
    "redis_url": "DEFECTSCAN_REDIS_URL",
}


# --------------------------------------------------------------------------- location

_config_file_override: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "defectscan_config_file", default=None
)


def settings_file() -> Path | None:
    """The plant file in effect: ``load_settings(config_file=...)``, else ``DEFECTSCAN_CONFIG``."""
    override = _config_file_override.get()
    if override is not None:
        return override
    env = os.environ.get("DEFECTSCAN_CONFIG")
    return Path(env) if env else None


@contextmanager
def using_plant_file(path: Path | None) -> Iterator[None]:
    """Make ``path`` the plant file :func:`settings_file` names, inside the ``with`` block."""
    token = _config_file_override.set(path)
    try:
        yield
    finally:
        _config_file_override.reset(token)


# --------------------------------------------------------------------------- settings source


class PlantFileSource(YamlConfigSettingsSource):
    """The YAML plant file, refused when it holds a secret."""

    def __init__(self, settings_cls: type[BaseSettings], *, yaml_file: Path) -> None:
        if not yaml_file.is_file():
            msg = f"plant file {yaml_file} does not exist: fix DEFECTSCAN_CONFIG or --config"
            raise ConfigError(msg)
        super().__init__(settings_cls, yaml_file=yaml_file)
        self._path = yaml_file

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        secrets = _secret_issues(data, {})
        if secrets:
            raise ConfigError(f"{self._path}: {secrets[0].message}")
        return data


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a plant file: where (YAML line, dotted key path) and what to do."""

    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: {self.path or '(top level)'}: {self.message}"


def check_plant_file(path: str | Path, settings_cls: type[BaseModel]) -> list[ConfigIssue]:
    """Every problem in plant file ``path``, checked against ``settings_cls``; empty when valid.

    Each issue says where it is. The file is checked on its own: the environment neither hides
    nor causes an error.
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        return [ConfigIssue(None, "", f"cannot read {p}: {exc.strerror or exc}")]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return [ConfigIssue(line, "", f"not valid YAML: {problem}")]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return [ConfigIssue(1, "", "the plant file must be a mapping of settings (key: value)")]
    positions = _node_lines(root)
    issues = _secret_issues(data, positions)
    issues += _name_issues(data, positions)
    try:
        settings_cls.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            issues.append(_issue_from_error(error, data, positions))
    return sorted(issues, key=lambda i: (i.line or 0, i.path))


def _node_lines(node: Any, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Key path -> 1-based YAML line of that key (or sequence item)."""
    import yaml

    out: dict[tuple[Any, ...], int] = {}
    if node is None:
        return out
    if not prefix:
        out[()] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            path = (*prefix, key)
            out[path] = key_node.start_mark.line + 1
            out.update(_node_lines(value_node, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = (*prefix, i)
            out[path] = item.start_mark.line + 1
            out.update(_node_lines(item, path))
    return out


def _issue_from_error(
    error: Mapping[str, Any], data: Any, positions: Mapping[tuple[Any, ...], int]
) -> ConfigIssue:
    # Walk the error's location through the data: union tags and validator names in `loc`
    # (e.g. 'function-after[...]', 'literal[...]') are not keys, so they are skipped.
    node = data
    path: list[Any] = []
    for part in error["loc"]:
        if isinstance(node, Mapping) and str(part) in {str(k) for k in node}:
            key = next(k for k in node if str(k) == str(part))
            path.append(key)
            node = node[key]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif error["type"] in ("missing", "extra_forbidden") and part == error["loc"][-1]:
            path.append(part)
    line = None
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in positions:
            line = positions[tuple(path[:n])]
            break
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown setting: check the spelling (see `defectscan config show`)"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    dotted = ".".join(str(p) for p in path)
    return ConfigIssue(line, dotted, message)


def _name_issues(
    data: dict[str, Any], positions: Mapping[tuple[Any, ...], int]
) -> list[ConfigIssue]:
    """A line whose ``name`` differs from its key; fixed in ``data`` so it is reported once."""
    issues: list[ConfigIssue] = []
    lines = data.get("lines")
    if not isinstance(lines, dict):
        return issues
    for key, line in lines.items():
        if isinstance(line, dict) and "name" in line and line["name"] != key:
            msg = f"line {key!r} has name {line['name']!r}: drop `name` or make it {key!r}"
            path = ("lines", key, "name")
            issues.append(ConfigIssue(positions.get(path), f"lines.{key}.name", msg))
            lines[key] = {**line, "name": key}
    return issues


def _secret_issues(data: Any, positions: Mapping[tuple[Any, ...], int]) -> list[ConfigIssue]:
    """A ConfigIssue for every URL in ``data`` (at any depth) that carries a secret."""
    issues: list[ConfigIssue] = []
    for path, value in _strings(data):
        where = url_secrets(value)
        if not where:
            continue
        dotted = ".".join(str(p) for p in path)
        key = path[0] if len(path) == 1 else None
        if key in SECRET_SETTINGS:
            env = SECRET_SETTINGS[str(key)]
            msg = (
                f"{key} holds a password ({', '.join(where)}); secrets never go in the plant "
                f"file: drop {key} here and set {env} in the environment (with compose: "
                "docker/.env)"
            )
        elif len(path) == 3 and path[0] == "lines" and path[2] == "source":
            msg = (
                f"the source URL holds a password ({', '.join(where)}); secrets never go in the "
                "plant file: write redis://HOST:PORT/DB?stream=NAME and set the password in "
                "DEFECTSCAN_REDIS_URL (a line's Redis source borrows its credentials)"
            )
        else:
            msg = (
                f"this URL holds a password ({', '.join(where)}); secrets never go in the plant "
                "file: set them in the environment (DEFECTSCAN_DATABASE_URL, "
                "DEFECTSCAN_REDIS_URL) instead"
            )
        line = None
        for n in range(len(path), -1, -1):
            if tuple(path[:n]) in positions:
                line = positions[tuple(path[:n])]
                break
        issues.append(ConfigIssue(line, dotted, msg))
    return issues


def _strings(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string in nested mappings and lists, with its key path."""
    if isinstance(data, str):
        yield prefix, data
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from _strings(value, (*prefix, key))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            yield from _strings(value, (*prefix, i))


def url_secrets(text: str) -> list[str]:
    """Where the URL ``text`` carries a secret: its user-info password, secret query keys.

    Empty for a URL without one, and for text that is not a URL (``folder:/x``, ``redis:NAME``).
    """
    if "://" not in text:
        return []
    try:
        parts = urlsplit(text.strip())
        password = parts.password
    except ValueError:
        return []
    found = ["user:PASSWORD@"] if password else []
    query = parts.query
    if not query and "?" in parts.path:  # schemes urlsplit does not split the query of
        query = parts.path.split("?", 1)[1]
    for key, _ in parse_qsl(query, keep_blank_values=True):
        if is_secret_key(key):
            found.append(f"query parameter {key!r}")
    return found
