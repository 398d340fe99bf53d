"""Single sign-on through a reverse proxy's user header: off by default, believed only from a
trusted proxy's address, only for an existing enabled user; it makes a normal session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from helpers.console import Seeded


@pytest.fixture
def sso_app(tmp_path: Path, db_url: str, db_engine: sa.Engine, seeded: Seeded) -> Iterator[object]:
    from defectscan.config import ConsoleConfig, Settings
    from defectscan.console.app import create_app

    settings = Settings(
        var_dir=tmp_path / "var",
        database_url=db_url,
        console=ConsoleConfig(trusted_user_header="X-Remote-User", trusted_proxies=["10.0.0.5"]),
    )
    app = create_app(settings)
    yield app
    app.state.console.engine.dispose()


def test_the_header_is_ignored_by_default(client: TestClient) -> None:
    resp = client.get("/lines", headers={"X-Remote-User": "admin"})
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/login")


def test_a_trusted_proxy_logs_the_named_user_in(
    sso_app: object, db_sessions: sessionmaker[Session]
) -> None:
    with TestClient(sso_app, client=("10.0.0.5", 40000), follow_redirects=False) as proxy:  # type: ignore[arg-type]
        resp = proxy.get("/lines", headers={"X-Remote-User": "operator"})
        assert resp.status_code == 200
        assert "operator · operator" in resp.text
        assert "defectscan_session" in resp.cookies  # a normal session from here on
        # unknown and disabled users get nothing
        proxy.cookies.clear()
        assert proxy.get("/lines", headers={"X-Remote-User": "nobody"}).status_code == 303
    with db_sessions() as s:
        assert (
            s.execute(sa.text("SELECT count(*) FROM audit WHERE action = 'login_sso'")).scalar_one()
            == 1
        )


def test_an_untrusted_address_cannot_use_the_header(sso_app: object) -> None:
    with TestClient(sso_app, client=("10.0.0.9", 40000), follow_redirects=False) as other:  # type: ignore[arg-type]
        assert other.get("/lines", headers={"X-Remote-User": "admin"}).status_code == 303
