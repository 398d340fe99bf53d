"""``defectscan users add|passwd|disable|list`` and ``config show``'s threshold origins, on the
real database (the CLI in process, as a shell would run it)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from helpers.cli import run_cli


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    u = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setenv("DEFECTSCAN_DATABASE_URL", u)
    from defectscan.config import get_settings

    get_settings.cache_clear()
    yield u
    get_settings.cache_clear()


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def test_users_add_passwd_disable_list(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from defectscan.console.security import verify_password

    _stdin(monkeypatch, "short\n")
    code, _, err = run_cli(["users", "add", "ann", "--password-stdin"], capsys)
    assert code == 1
    assert "at least 10 characters" in err
    _stdin(monkeypatch, "a-long-password-1\n")
    assert (
        run_cli(["users", "add", "ann", "--role", "operator", "--password-stdin"], capsys)[0] == 0
    )
    code, out, _ = run_cli(["users", "add", "bob", "--role", "admin", "--generate"], capsys)
    assert code == 0
    generated = out.split("password (shown once): ")[1].strip()
    assert len(generated) >= 16
    code, _, err = run_cli(["users", "add", "ann", "--generate"], capsys)
    assert code == 1
    assert "exists already" in err
    assert run_cli(["users", "add", "cy", "--role", "boss", "--generate"], capsys)[0] == 1
    engine = sa.create_engine(url)
    with engine.connect() as c:
        rows = dict(c.execute(sa.text("SELECT name, password_hash FROM users")).all())
    assert verify_password(rows["ann"], "a-long-password-1")[0]
    assert verify_password(rows["bob"], generated)[0]
    assert rows["ann"].startswith("$argon2id$")  # a hash, never the password
    _stdin(monkeypatch, "another-password-2\n")
    assert run_cli(["users", "passwd", "ann", "--password-stdin"], capsys)[0] == 0
    assert run_cli(["users", "disable", "ann"], capsys)[0] == 0
    code, out, _ = run_cli(["users", "list"], capsys)
    assert code == 0
    assert "ann" in out
    assert "disabled" in out
    assert "bob" in out
    with engine.connect() as c:
        new_hash, disabled = c.execute(
            sa.text("SELECT password_hash, disabled FROM users WHERE name = 'ann'")
        ).one()
        actions = [a for (a,) in c.execute(sa.text("SELECT action FROM audit ORDER BY id"))]
    assert verify_password(new_hash, "another-password-2")[0]
    assert disabled
    assert actions == ["user_add", "user_add", "user_passwd", "user_disable"]
    engine.dispose()


def test_config_show_names_the_origin_of_each_threshold(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from defectscan.store.db import make_engine, session_factory, upgrade_to_head
    from defectscan.store.line_rules import apply_threshold_rule

    plant = tmp_path / "plant.yaml"
    plant.write_text("lines:\n  L1:\n    thresholds: {scratch: 0.6, dent: 0.5}\n")
    engine = make_engine(url)
    upgrade_to_head(engine)
    with session_factory(engine).begin() as s:
        apply_threshold_rule("L1", "scratch", 0.7, who="eng", reason="first", session=s)
        apply_threshold_rule("L1", "scratch", 0.75, who="eng", reason="second", session=s)
    engine.dispose()
    code, out, _ = run_cli(["config", "show", "--config", str(plant), "--json"], capsys)
    assert code == 0
    line = json.loads(out)["lines"]["L1"]
    assert line["thresholds"] == {"scratch": 0.75, "dent": 0.5}
    assert line["threshold_origin"]["dent"] == "plant file"
    assert line["threshold_origin"]["scratch"].startswith("console rule v2 by eng")


def test_the_demo_account_gets_a_new_random_password_each_time(url: str) -> None:
    from defectscan.cli.demo import demo_account
    from defectscan.console.security import verify_password
    from defectscan.store.db import make_engine, upgrade_to_head

    engine = make_engine(url)
    upgrade_to_head(engine)
    name, first = demo_account(url)
    _, second = demo_account(url)
    assert name == "demo"
    assert first != second
    assert len(first) >= 16
    with engine.connect() as c:
        role, stored = c.execute(
            sa.text("SELECT role, password_hash FROM users WHERE name = 'demo'")
        ).one()
    engine.dispose()
    assert role == "engineer"
    assert verify_password(stored, second)[0]
    assert not verify_password(stored, first)[0]
