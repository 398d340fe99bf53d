"""The plant file: valid files, every kind of error with its location, environment overrides."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from defectscan.config import (
    ConfigIssue,
    ModelRef,
    Settings,
    check_config_file,
    get_settings,
    load_settings,
    mask_url,
    parse_model_ref,
    parse_source,
)
from defectscan.errors import ConfigError
from helpers.cli import run_cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docker" / "plant.example.yaml"

VALID = """\
var_dir: /tmp/ds
device: cpu
batch_size: 4
retrain_schedule: "0 3 * * 0"
archive:
  keep_pass_share: 0.05
lines:
  line3:
    cameras: [cam-1, cam-2]
    source: redis://redis:6379/0?stream=line3-images
    model: champion:line3-unet
    engine: {backend: torch, device: cuda:1, precision: bf16}
    tile_size: 256
    overlap: 32
    thresholds: {scratch: 0.6}
    min_area: {spot: 12}
    fail_area: {stain: 400}
    pass_classes: [stain]
    batch_schedule: "*/15 * * * *"
  line4:
    source: folder:/data/line4
    model: /models/line4.safetensors
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DEFECTSCAN_"):
            monkeypatch.delenv(key)
    get_settings.cache_clear()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    return path


def _by_path(issues: list[ConfigIssue]) -> dict[str, ConfigIssue]:
    return {i.path: i for i in issues}


def test_example_plant_file_is_valid() -> None:
    assert check_config_file(EXAMPLE) == []
    settings = load_settings(EXAMPLE)
    assert set(settings.lines) == {"line3", "line4"}


def test_valid_file_loads_lines_engines_and_schedules(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, VALID))
    line3 = settings.lines["line3"]
    assert line3.name == "line3"  # filled in from the key
    assert line3.cameras == ["cam-1", "cam-2"]
    spec = line3.source_spec
    assert spec is not None
    assert (spec.kind, spec.url, spec.stream) == ("redis", "redis://redis:6379/0", "line3-images")
    assert settings.model_for("line3") == ModelRef(kind="champion", name="line3-unet")
    assert str(settings.model_for("line3")) == "champion:line3-unet"
    assert settings.model_for("line4") == ModelRef(
        kind="file", path=Path("/models/line4.safetensors")
    )
    engine = settings.engine_for("line3")
    assert (engine.backend, engine.device, engine.precision, engine.batch_size) == (
        "torch",
        "cuda:1",
        "bf16",
        4,  # inherited from the service-wide batch_size
    )
    assert settings.engine_for("line4").device == "cpu"
    assert settings.engine_for(None).backend == "auto"
    assert settings.tiling_for("line3") == (256, 32)
    assert settings.tiling_for("line3", tile_size=512) == (512, 32)
    assert settings.archive_for("line3").keep_pass_share == 0.05
    from defectscan.archive import ArchivePolicy

    assert ArchivePolicy.from_config(settings.archive_for("line3")).pass_share == 0.05
    assert settings.retrain_schedule == "0 3 * * 0"
    assert settings.archive_dir == Path("/tmp/ds/archive")
    assert settings.database_url == "sqlite:////tmp/ds/defectscan.db"


def test_existing_line_config_fields_keep_working() -> None:
    from defectscan.config import LineConfig

    line = LineConfig(name="demo", min_area={"spot": 12}, fail_area={"stain": 40})
    assert line.thresholds == {}
    assert line.engine.device is None
    assert line.source_spec is None


def test_each_kind_of_error_is_reported_with_line_and_key(tmp_path: Path) -> None:
    text = """\
batch_size: 0
devcie: cpu
retrain_schedule: every day
lines:
  line3:
    source: ftp://camera
    model: best-model
    engine:
      device: gpu
      precision: fp8
    thresholds: {scratch: 1.5}
    cameras: cam-1
    archive: {keep_pass_share: 2}
"""
    issues = _by_path(check_config_file(_write(tmp_path, text)))
    expected = {
        "batch_size": (1, "greater than or equal to 1"),
        "devcie": (2, "unknown setting"),
        "retrain_schedule": (3, "not a cron schedule"),
        "lines.line3.source": (6, "folder:PATH"),
        "lines.line3.model": (7, "checkpoint file"),
        "lines.line3.engine.device": (9, "cuda:N"),
        "lines.line3.engine.precision": (10, "'bf16'"),
        "lines.line3.thresholds": (11, "[0, 1]"),
        "lines.line3.cameras": (12, "valid list"),
        "lines.line3.archive.keep_pass_share": (13, "less than or equal to 1"),
    }
    assert set(issues) == set(expected)
    for path, (line, text_part) in expected.items():
        assert issues[path].line == line, path
        assert text_part in issues[path].message, (path, issues[path].message)


def test_cross_field_errors_are_located_at_the_line(tmp_path: Path) -> None:
    text = "lines:\n  l1:\n    name: other\n  l2:\n    tile_size: 64\n    overlap: 64\n"
    issues = check_config_file(_write(tmp_path, text))
    assert [(i.line, i.path) for i in issues] == [(3, "lines.l1.name"), (4, "lines.l2")]
    assert "drop `name` or make it 'l1'" in issues[0].message
    assert issues[1].message == "overlap 64 must be smaller than the tile size 64"


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    issues = check_config_file(_write(tmp_path, "device: cpu\nlines: [unclosed\n"))
    assert len(issues) == 1
    assert issues[0].line == 3  # where the parser gave up: the end of the file
    assert "not valid YAML" in issues[0].message


def test_password_in_file_is_an_error_naming_the_environment_variable(tmp_path: Path) -> None:
    text = (
        "database_url: postgresql+psycopg://app:s3cret@db/defects\n"
        "redis_url: redis://:hunter2@redis:6379/0\n"
        "lines:\n  l1:\n    source: redis://:pw@redis:6379/0?stream=s\n"
    )
    path = _write(tmp_path, text)
    issues = _by_path(check_config_file(path))
    assert issues["database_url"].line == 1
    assert "DEFECTSCAN_DATABASE_URL" in issues["database_url"].message
    assert issues["redis_url"].line == 2
    assert "DEFECTSCAN_REDIS_URL" in issues["redis_url"].message
    assert issues["lines.l1.source"].line == 5
    for issue in issues.values():
        assert "s3cret" not in issue.message
        assert "hunter2" not in issue.message
    with pytest.raises(ConfigError, match="DEFECTSCAN_DATABASE_URL") as exc:
        load_settings(path)
    assert "s3cret" not in str(exc.value)


def test_runtime_settings_refuse_a_plant_file_with_a_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "redis_url: redis://:hunter2@redis:6379/0\n")
    monkeypatch.setenv("DEFECTSCAN_CONFIG", str(path))
    with pytest.raises(ConfigError, match="DEFECTSCAN_REDIS_URL"):
        Settings()


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, VALID)
    monkeypatch.setenv("DEFECTSCAN_CONFIG", str(path))
    monkeypatch.setenv("DEFECTSCAN_DEVICE", "cuda")
    monkeypatch.setenv("DEFECTSCAN_BATCH_SIZE", "32")
    monkeypatch.setenv("DEFECTSCAN_PRECISION", "fp16")
    monkeypatch.setenv("DEFECTSCAN_LINES__LINE3__ENGINE__DEVICE", "cuda:3")
    monkeypatch.setenv("DEFECTSCAN_DATABASE_URL", "postgresql+psycopg://app:s3cret@db/defects")
    settings = Settings()
    assert settings.device == "cuda"
    assert settings.batch_size == 32
    assert settings.precision == "fp16"
    assert settings.engine_for("line3").device == "cuda:3"
    # the rest of the line still comes from the file (the sources are merged, not replaced)
    assert settings.engine_for("line3").backend == "torch"
    assert settings.lines["line3"].cameras == ["cam-1", "cam-2"]
    assert settings.engine_for("line4").device == "cuda"
    assert "s3cret" not in json.dumps(settings.masked())
    assert settings.masked()["database_url"] == "postgresql+psycopg://app:***@db/defects"


def test_sources_models_and_masking_helpers() -> None:
    assert parse_source("folder:/a/b").path == Path("/a/b")
    assert parse_source("redis:line3").stream == "line3"
    spec = parse_source("redis://h:6379/2?stream=s&group=g")
    assert spec.redis_url_with_credentials("redis://u:pw@other:1/0") == "redis://u:pw@h:6379/2"
    assert parse_source("redis:s").redis_url_with_credentials("redis://x:1/0") == "redis://x:1/0"
    with pytest.raises(ConfigError, match="names no stream"):
        parse_source("redis://h:6379/0")
    assert parse_model_ref("champion") == ModelRef(kind="champion")
    assert parse_model_ref("champion:x").name == "x"
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("sqlite:///var/x.db") == "sqlite:///var/x.db"


def test_cli_config_check_and_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_cli(["config", "check", str(EXAMPLE)], capsys)
    assert code == 0
    assert out.strip().endswith(": ok")
    bad = _write(tmp_path, "lines:\n  l1:\n    engine: {device: gpu}\n")
    code, out, err = run_cli(["config", "check", str(bad)], capsys)
    assert code == 1
    assert f"{bad}:3: lines.l1.engine.device: device 'gpu'" in out
    assert "1 error(s)" in err

    monkeypatch.setenv("DEFECTSCAN_DATABASE_URL", "postgresql+psycopg://app:s3cret@db/defects")
    code, out, _ = run_cli(["config", "show", "--json", "--config", str(EXAMPLE)], capsys)
    assert code == 0
    shown = json.loads(out)
    assert shown["database_url"] == "postgresql+psycopg://app:***@db/defects"
    assert shown["lines"]["line3"]["engine"]["device"] == "cuda:0"
    assert "s3cret" not in out


def test_inspect_defaults_come_from_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """DEFECTSCAN_DEVICE / _PRECISION / _BATCH_SIZE reach the inspector (they are read)."""
    from defectscan import pipeline

    seen: dict[str, object] = {}

    def fake_from_checkpoint(model: object, **kwargs: object) -> object:
        seen.update(kwargs)
        msg = "stop here"
        raise ConfigError(msg)

    monkeypatch.setattr(pipeline.Inspector, "from_checkpoint", fake_from_checkpoint)
    monkeypatch.setenv("DEFECTSCAN_DEVICE", "cpu")
    monkeypatch.setenv("DEFECTSCAN_PRECISION", "fp32")
    monkeypatch.setenv("DEFECTSCAN_BATCH_SIZE", "3")
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    code, _, err = run_cli(["inspect", str(image), "--model", str(tmp_path / "m.pth")], capsys)
    assert code == 1
    assert "stop here" in err
    assert (seen["device"], seen["precision"], seen["batch_size"]) == ("cpu", "fp32", 3)
    code, _, _ = run_cli(
        ["inspect", str(image), "--model", "m.pth", "--device", "auto", "--batch-size", "5"],
        capsys,
    )
    assert (seen["device"], seen["batch_size"]) == ("auto", 5)


def test_json_logs_carry_the_inspection_context() -> None:
    import io

    from defectscan.logs import configure_logging

    stream = io.StringIO()
    configure_logging(logging.INFO, "json", stream=stream)
    try:
        logging.getLogger("defectscan.test").info(
            "stored to %s",
            "postgresql://app:s3cret@db/x",
            extra={"inspection_id": 7, "sha256": "ab" * 32, "line": "L3", "camera": "c1"},
        )
    finally:
        configure_logging(logging.WARNING, "text")
    record = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert record["level"] == "INFO"
    assert record["logger"] == "defectscan.test"
    assert record["message"] == "stored to postgresql://app:***@db/x"
    assert (record["inspection_id"], record["line"], record["camera"]) == (7, "L3", "c1")
    assert record["sha256"] == "ab" * 32
    assert "model_version" not in record
    assert "time" in record


def test_pass_classes_are_recorded_but_never_fail_the_part() -> None:
    import numpy as np

    from defectscan.config import LineConfig
    from defectscan.model.spec import ModelSpec
    from defectscan.postprocess import PostprocessConfig, postprocess

    spec = ModelSpec(n_channels=3, activation="sigmoid", class_names=("scratch", "stain"))
    probs = np.zeros((2, 32, 32), np.float32)
    probs[1, 4:12, 4:12] = 0.9  # a stain only
    strict = postprocess(probs, PostprocessConfig.from_spec(spec, LineConfig(name="a")))
    cosmetic = LineConfig(name="b", pass_classes=["stain"])
    lenient = postprocess(probs, PostprocessConfig.from_spec(spec, cosmetic))
    assert strict.verdict == "fail"
    assert lenient.verdict == "pass"
    assert [d.class_name for d in lenient.defects] == ["stain"]
    with pytest.raises(ConfigError, match="unknown pass_classes"):
        PostprocessConfig.from_spec(spec, LineConfig(name="c", pass_classes=["dent"]))


def test_a_password_anywhere_in_a_url_of_the_plant_file_is_an_error(tmp_path: Path) -> None:
    text = (
        "lines:\n"
        "  l1:\n"
        "    source: redis://redis:6379/0?stream=s&password=hunter2\n"
        "  l2:\n"
        "    source: rediss://redis:6380/0?stream=t&ssl_password=hunter3\n"
        "retrain_recipe:\n"
        "  upload: https://store.example/models?token=hunter4\n"
    )
    path = _write(tmp_path, text)
    issues = _by_path(check_config_file(path))
    assert set(issues) == {"lines.l1.source", "lines.l2.source", "retrain_recipe.upload"}
    assert issues["lines.l1.source"].line == 3
    assert "query parameter 'password'" in issues["lines.l1.source"].message
    assert "DEFECTSCAN_REDIS_URL" in issues["lines.l1.source"].message
    assert issues["retrain_recipe.upload"].line == 7
    for issue in issues.values():
        assert "hunter" not in issue.message
    with pytest.raises(ConfigError, match="holds a password") as exc:
        load_settings(path)
    assert "hunter" not in str(exc.value)


def test_url_secrets_are_masked_everywhere_they_are_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from defectscan.logs import configure_logging

    assert mask_url("redis://h:6379/0?stream=s&password=pw") == (
        "redis://h:6379/0?stream=s&password=***"
    )
    assert mask_url("redis://u:pw@h/0?token=abc&db=1") == "redis://u:***@h/0?token=***&db=1"
    assert mask_url("no url here: password=x") == "no url here: password=x"

    monkeypatch.setenv("DEFECTSCAN_REDIS_URL", "redis://h:6379/0?password=s3cret")
    code, out, _ = run_cli(["config", "show", "--json"], capsys)
    assert code == 0
    assert "s3cret" not in out
    assert json.loads(out)["redis_url"] == "redis://h:6379/0?password=***"

    stream = io.StringIO()
    configure_logging(logging.INFO, "text", stream=stream)
    try:
        logging.getLogger("defectscan.test").warning(
            "cannot reach %s", "redis://h:6379/0?stream=s&password=s3cret"
        )
    finally:
        configure_logging(logging.WARNING, "text")
    assert "s3cret" not in stream.getvalue()
    assert "password=***" in stream.getvalue()


def test_redis_urls_borrow_the_credentials_of_defectscan_redis_url() -> None:
    from defectscan.config import with_redis_credentials

    env = "redis://app:pw@redis:6379/0"
    assert with_redis_credentials("redis://other:6380/2?x=1", env) == (
        "redis://app:pw@other:6380/2?x=1"
    )
    assert with_redis_credentials("redis://me:mine@other/0", env) == "redis://me:mine@other/0"
    assert with_redis_credentials("redis://other/0", "redis://redis/0") == "redis://other/0"
    assert with_redis_credentials("redis://other/0", None) == "redis://other/0"
