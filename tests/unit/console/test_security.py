"""The console's security: logins, roles, CSRF, cookies, image names, escaping, SQL in filters,
lockout. Real database, real argon2, real app (FastAPI's TestClient)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from helpers.console import PASSWORDS, Seeded, csrf_of, login

PAGES = [
    "/lines",
    "/lines/table",
    "/inspections",
    "/inspections/items",
    "/queue",
    "/models",
    "/events",
    "/thresholds",
    "/trends",
]


def _detail_pages(seeded: Seeded) -> list[str]:
    i = seeded.fails[0]
    sha = seeded.sha256[i]
    return [
        f"/inspections/{i}",
        f"/review/{i}",
        f"/review/{i}/mask",
        f"/images/{sha}",
        f"/images/{sha}/thumb/{i}.jpg",
        f"/images/{sha}/overlay/{i}.png",
        "/queue/next",
    ]


def test_every_page_without_a_session_goes_to_login(client: TestClient, seeded: Seeded) -> None:
    for path in PAGES + _detail_pages(seeded):
        resp = client.get(path)
        assert resp.status_code == 303, path
        assert resp.headers["location"].startswith("/login?next="), path


def test_htmx_and_api_requests_without_a_session_get_401(client: TestClient) -> None:
    resp = client.get("/lines/table", headers={"HX-Request": "true"})
    assert resp.status_code == 401
    assert resp.headers["HX-Redirect"] == "/login"


def test_every_action_without_a_session_is_refused(client: TestClient, seeded: Seeded) -> None:
    i = seeded.fails[0]
    for path in (
        "/logout",
        "/lines/L1/pause",
        "/lines/L1/resume",
        f"/review/{i}",
        f"/models/{seeded.model_version}/promote",
        "/models/rollback",
        "/retrain",
        "/thresholds/apply",
    ):
        resp = client.post(path, data={"reason": "x"})
        assert resp.status_code in (303, 401), path
        if resp.status_code == 303:
            assert resp.headers["location"].startswith("/login"), path


ACTIONS = {
    # path -> least role that may
    "/lines/L1/pause": "operator",
    "/retrain": "operator",
    "/models/rollback": "engineer",
    "/thresholds/apply": "engineer",
}
ROLES = ("viewer", "operator", "engineer", "admin")


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_each_role_is_refused_what_it_may_not_do(
    client: TestClient, seeded: Seeded, role: str
) -> None:
    token = login(client, role)
    i = seeded.fails[0]
    actions = dict(ACTIONS)
    actions[f"/models/{seeded.model_version}/promote"] = "engineer"
    for path, needed in actions.items():
        if ROLES.index(role) >= ROLES.index(needed):
            continue
        resp = client.post(path, data={"csrf_token": token, "reason": "because"})
        assert resp.status_code == 403, (role, path)
    if role == "viewer":
        resp = client.post(
            f"/review/{i}", json={"action": "accept"}, headers={"X-CSRF-Token": token}
        )
        assert resp.status_code == 403


def test_a_missing_or_wrong_csrf_token_is_refused(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    token = login(client, "operator")
    assert client.post("/lines/L1/pause", data={}).status_code == 403
    assert client.post("/lines/L1/pause", data={"csrf_token": "x" * 43}).status_code == 403
    resp = client.post(
        f"/review/{seeded.fails[0]}", json={"action": "accept"}, headers={"X-CSRF-Token": "nope"}
    )
    assert resp.status_code == 403
    with db_sessions() as s:
        assert s.execute(sa.text("SELECT count(*) FROM line_controls")).scalar_one() == 0
        assert s.execute(sa.text("SELECT count(*) FROM reviews")).scalar_one() == 0
    # the right token, as htmx sends it (header) and as a form sends it (field)
    assert client.post("/lines/L1/pause", headers={"X-CSRF-Token": token}).status_code == 303
    assert client.post("/lines/L1/resume", data={"csrf_token": token}).status_code == 303


def test_the_login_form_needs_its_own_token(client: TestClient, seeded: Seeded) -> None:
    client.get("/login")
    resp = client.post(
        "/login", data={"username": "admin", "password": PASSWORDS["admin"], "csrf_token": "x"}
    )
    assert resp.status_code == 403
    assert "defectscan_session" not in resp.cookies


def test_the_session_cookie_has_its_flags(client: TestClient, seeded: Seeded) -> None:
    page = client.get("/login")
    resp = client.post(
        "/login",
        data={
            "csrf_token": csrf_of(page.text),
            "username": "viewer",
            "password": PASSWORDS["viewer"],
        },
    )
    assert resp.status_code == 303
    cookie = next(
        v for k, v in resp.headers.multi_items() if k == "set-cookie" and "defectscan_session" in v
    )
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= flags
    assert "samesite=lax" in cookie.lower()
    assert "secure" not in flags  # plain http here
    # behind TLS the cookie is Secure
    with TestClient(client.app, base_url="https://console.example", follow_redirects=False) as tls:
        page = tls.get("/login")
        resp = tls.post(
            "/login",
            data={
                "csrf_token": csrf_of(page.text),
                "username": "viewer",
                "password": PASSWORDS["viewer"],
            },
        )
        cookie = next(
            v
            for k, v in resp.headers.multi_items()
            if k == "set-cookie" and "defectscan_session" in v
        )
        assert "secure" in {p.strip().lower() for p in cookie.split(";")}


def test_pages_carry_a_strict_content_security_policy(client: TestClient, seeded: Seeded) -> None:
    login(client, "viewer")
    resp = client.get("/lines")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert resp.headers["x-frame-options"] == "DENY"
    assert "<script>" not in resp.text  # no inline script: every script has a src
    assert not re.search(r"<script(?![^>]*\bsrc=)", resp.text)
    assert not re.search(r'\son[a-z]+="', resp.text)  # no inline event handlers


def test_logout_revokes_the_session_in_the_database(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    token = login(client, "viewer")
    cookie = client.cookies.get("defectscan_session")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    with db_sessions() as s:
        assert (
            s.execute(
                sa.text("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL")
            ).scalar_one()
            == 1
        )
    # the old cookie, replayed, no longer works
    client.cookies.set("defectscan_session", cookie)
    assert client.get("/lines").status_code == 303


def test_an_expired_session_is_refused(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    login(client, "viewer")
    with db_sessions.begin() as s:
        s.execute(sa.text("UPDATE sessions SET expires_at = created_at"))
    assert client.get("/lines").status_code == 303


def test_disabling_a_user_ends_their_sessions(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    from defectscan.store.console_users import set_user_disabled

    login(client, "operator")
    with db_sessions.begin() as s:
        set_user_disabled("operator", True, session=s)
    assert client.get("/lines").status_code == 303


@pytest.mark.parametrize(
    "path",
    [
        "/images/..%2F..%2Fetc%2Fpasswd",
        "/images/../../etc/passwd",
        "/images/%2e%2e%2f%2e%2e%2fdefectscan.db",
        "/images/" + "g" * 64,
        "/images/" + "A" * 64,
        "/images/" + "a" * 63,
        "/images/" + "a" * 65,
        "/images/" + "a" * 64,  # hex, but no such image
        "/static/../console/app.py",
        "/static/%2e%2e/app.py",
    ],
)
def test_image_names_that_are_not_a_known_sha256_are_404(
    client: TestClient, seeded: Seeded, path: str
) -> None:
    login(client, "viewer")
    resp = client.get(path)
    assert resp.status_code == 404, resp.text[:200]
    assert "root:" not in resp.text
    assert "def create_app" not in resp.text


def test_an_image_of_another_inspection_is_404(client: TestClient, seeded: Seeded) -> None:
    login(client, "viewer")
    a, b = seeded.fails[0], seeded.fails[1]
    assert client.get(f"/images/{seeded.sha256[a]}/thumb/{b}.jpg").status_code == 404
    assert client.get(f"/images/{seeded.sha256[a]}/thumb/{a}.jpg").status_code == 200


def test_a_script_in_a_comment_or_reason_is_shown_as_text(
    client: TestClient, seeded: Seeded
) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    token = login(client, "operator")
    i = seeded.fails[0]
    resp = client.post(
        f"/review/{i}",
        json={"action": "accept", "comment": evil},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 200, resp.text
    page = client.get(f"/inspections/{i}")
    assert evil not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    resp = client.post("/retrain", data={"csrf_token": token, "reason": evil})
    assert resp.status_code == 303
    models = client.get("/models")
    assert evil not in models.text
    assert "&lt;script&gt;" in models.text
    # and in a filter echoed back into the form
    gallery = client.get("/inspections", params={"since": evil})
    assert evil not in gallery.text


@pytest.mark.parametrize(
    "value",
    [
        "L1' OR '1'='1",
        "'; DROP TABLE inspections; --",
        '" OR 1=1 --',
        "%",
        "_",
    ],
)
def test_sql_in_filter_fields_is_harmless(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session], value: str
) -> None:
    login(client, "viewer")
    for key in ("line", "camera", "class_name", "model_version", "since", "score_min"):
        resp = client.get("/inspections", params={key: value})
        assert resp.status_code == 200
        if key in ("line", "camera", "class_name", "model_version"):
            assert "No inspection matches these filters." in resp.text, key
    assert client.get("/events", params={"text": value, "kind": value}).status_code == 200
    with db_sessions() as s:
        assert s.execute(sa.text("SELECT count(*) FROM inspections")).scalar_one() == len(
            seeded.ids
        )


def test_too_many_bad_passwords_lock_the_account(
    client: TestClient, seeded: Seeded, db_sessions: sessionmaker[Session]
) -> None:
    for _ in range(5):
        page = client.get("/login")
        resp = client.post(
            "/login",
            data={"csrf_token": csrf_of(page.text), "username": "operator", "password": "wrong"},
        )
        assert resp.status_code == 401
    page = client.get("/login")
    resp = client.post(
        "/login",
        data={
            "csrf_token": csrf_of(page.text),
            "username": "operator",
            "password": PASSWORDS["operator"],
        },
    )
    assert resp.status_code == 423  # locked, even with the right password
    assert "locked" in resp.text
    with db_sessions() as s:
        locked = s.execute(
            sa.text("SELECT locked_until FROM users WHERE name = 'operator'")
        ).scalar_one()
        assert locked is not None
        actions = [a for (a,) in s.execute(sa.text("SELECT action FROM audit ORDER BY id")).all()]
    assert actions.count("login_failed") == 5
    assert actions[-1] == "login_locked"
    # when the lock has run out, the right password works again
    with db_sessions.begin() as s:
        s.execute(sa.text("UPDATE users SET locked_until = NULL WHERE name = 'operator'"))
    login(client, "operator")


def test_logins_are_throttled_per_address(client: TestClient, seeded: Seeded) -> None:
    statuses = []
    for k in range(22):
        page = client.get("/login")
        resp = client.post(
            "/login",
            data={"csrf_token": csrf_of(page.text), "username": f"nobody{k}", "password": "x"},
        )
        statuses.append(resp.status_code)
    assert statuses[:20] == [401] * 20
    assert statuses[20:] == [429, 429]


def test_the_next_target_after_login_stays_on_this_site(client: TestClient, seeded: Seeded) -> None:
    page = client.get("/login")
    resp = client.post(
        "/login",
        data={
            "csrf_token": csrf_of(page.text),
            "username": "viewer",
            "password": PASSWORDS["viewer"],
            "next": "//evil.example/x",
        },
    )
    assert resp.headers["location"] == "/lines"
