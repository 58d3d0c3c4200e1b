"""The web console (docs/console.md) over real HTTP, on a real gateway: who may read and do
what, sessions, CSRF, the login's brake, API tokens, the pages' contents in French.

``ConsoleGateway`` runs a real gateway in a thread of its own (its own event loop, as in
production), so that these tests and the browser tests (test_console_browser.py) talk to it
as a client would. The console's clock is the test's (``clock``): a session expires or a
login delay passes by moving it, never by sleeping.
"""

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from gateway_helpers import add_node, make_config

from gateway.cli.main import cli
from gateway.console import accounts, store
from gateway.pipeline.handoff import feed_outbox
from gateway.service import Gateway
from gateway.store.db import open_db
from protocols.const import CHANGED
from sim.sender import Sender, SimNode

PASSWORDS = {"admin": "admin-passphrase", "tech": "tech-passphrase", "lecteur": "viewer-passphrase"}
CONFIG = """
[site]
latitude = 45.0
longitude = 5.0
timezone = "Europe/Paris"

[detect]
lamps = ["lamp-*"]

[[detect.buildings]]
nodes = ["school-*"]
days = "mon-fri"
open = "07:30"
close = "18:30"
"""


class Clock:
    """The console's time: real time plus what the test moved it by."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class ConsoleGateway:
    """A real gateway on loopback, in a thread with its own event loop; ``url`` is its
    console. Seeded as a town would be: three accounts, a lamp that reports, one never
    heard, a school meter silent for two hours, and anomaly events."""

    def __init__(self, tmp_path: Path, config_text: str = CONFIG):
        self.cfg = make_config(tmp_path, config_text)
        (tmp_path / "gateway.toml").write_text(config_text)
        self.clock = Clock()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.gw: Gateway | None = None
        self.keys = {n: add_node(self.cfg, n) for n in ("lamp-001", "lamp-002", "school-01")}
        db = open_db(self.cfg.database)
        for name, role in (("admin", "admin"), ("tech", "technician"), ("lecteur", "viewer")):
            accounts.add_user(db, name, role, PASSWORDS[name])
        now = time.time()
        db.execute(
            "UPDATE nodes SET last_seen = ?, battery = 64 WHERE id = 'school-01'", [now - 7200]
        )
        db["anomalies"].insert_all(
            [
                {
                    "node": "lamp-001",
                    "channel": "p",
                    "kind": "lit_by_day",
                    "start": now - 3600,
                    "end": None,
                    "score": 0.9,
                    "reason": "allumé en plein jour (52 W à 14:05)",
                    "version": 1,
                },
                {
                    "node": "school-01",
                    "channel": "p",
                    "kind": "off_schedule",
                    "start": now - 86400,
                    "end": now - 80000,
                    "score": 0.7,
                    "reason": "consommation hors horaires",
                    "version": 1,
                },
            ]
        )
        db.conn.commit()
        db.close()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self.error is not None:
            raise self.error
        self.url = f"http://127.0.0.1:{self.gw.http_port}"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            self.gw = Gateway(self.cfg)
            await self.gw.start()
            self.gw.console.settings.clock = self.clock
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with Sender("127.0.0.1", self.gw.coap_port) as s:
                t = int(time.time()) - 60
                readings = [("p", t - 60, 51.5), ("p", t, 52.25), ("bat", t, 87), ("rssi", t, -71)]
                answer = await s.send(SimNode("lamp-001", self.keys["lamp-001"]), readings)
                assert answer.code == CHANGED
        except BaseException as e:  # reported to the test's thread
            self.error = e
            self._started.set()
            if self.gw is not None:
                await self.gw.stop()
            return
        self._started.set()
        await self._stop.wait()
        await self.gw.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def db(self):
        return open_db(self.cfg.database)


@pytest.fixture
def console(tmp_path):
    c = ConsoleGateway(tmp_path)
    yield c
    c.stop()


def client(console: ConsoleGateway, lang: str = "fr") -> httpx.Client:
    return httpx.Client(
        base_url=console.url, follow_redirects=False, headers={"Accept-Language": lang}
    )


def login(console: ConsoleGateway, name: str, password: str | None = None, **kw) -> httpx.Client:
    c = client(console, **kw)
    form = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = c.post("/login", data={"csrf": csrf, "name": name, "password": password or PASSWORDS[name]})
    assert r.status_code == 303, r.text
    return c


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_nothing_is_readable_without_logging_in_but_metrics_and_health(console):
    c = client(console)
    for path in ("/", "/events", "/nodes/lamp-001/retire"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert c.post("/events/1/acknowledge", data={"note": "x"}).status_code == 303
    for path in ("/api/nodes", "/api/events", "/api/summaries"):
        r = c.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert c.get("/metrics").status_code == 200  # [http] metrics_public = true, the default
    assert c.get("/health").json() == {"status": "ok"}
    page = c.get("/login")
    assert "Se connecter" in page.text and "lamp-001" not in page.text


def test_login_sets_a_session_cookie_httponly_samesite_and_the_pages_are_french(console):
    c = client(console)
    form = c.get("/login")
    r = c.post(
        "/login",
        data={"csrf": csrf_of(form.text), "name": "tech", "password": PASSWORDS["tech"]},
    )
    cookie = r.headers["set-cookie"]
    assert "reverbere_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would never return
    fleet = c.get("/")
    assert fleet.status_code == 200
    assert "Parc" in fleet.text and "Europe/Paris" in fleet.text
    assert fleet.headers["content-security-policy"].startswith("default-src 'self'")
    row = re.search(r'<tr id="node-lamp-001".*?</tr>', fleet.text, re.S).group(0)
    assert "actif" in row and "52,2 W" in row and "87 %" in row and "-71 dBm" in row
    assert ">1</a>" in row  # one open event
    assert "jamais entendu" in re.search(r'<tr id="node-lamp-002".*?</tr>', fleet.text, re.S)[0]
    school = re.search(r'<tr id="node-school-01".*?</tr>', fleet.text, re.S).group(0)
    assert "muet depuis le" in school and "bâtiment" in school
    assert "Fleet" in login(console, "tech", lang="en;q=0.9,de").get("/").text


def test_fleet_filters_by_group_kind_and_state(console):
    c = login(console, "lecteur")
    ids = lambda r: re.findall(r'<tr id="node-([^"]+)"', r.text)  # noqa: E731
    assert ids(c.get("/")) == ["lamp-001", "lamp-002", "school-01"]
    assert ids(c.get("/?state=silent")) == ["school-01"]
    assert ids(c.get("/?state=never")) == ["lamp-002"]
    assert ids(c.get("/?kind=lamp")) == ["lamp-001", "lamp-002"]
    assert ids(c.get("/?group=school&state=alive")) == []


def test_wrong_password_is_refused_in_french(console):
    c = client(console)
    csrf = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"csrf": csrf, "name": "tech", "password": "guess-guess"})
    assert r.status_code == 401 and "Nom ou mot de passe incorrect" in r.text
    assert "reverbere_session" not in r.headers.get("set-cookie", "")
    unknown = c.post("/login", data={"csrf": csrf, "name": "nobody", "password": "x"})
    assert unknown.status_code in (401, 429)  # an unknown name looks like a wrong password


def test_an_expired_session_sends_back_to_the_login(console):
    c = login(console, "lecteur")
    assert c.get("/events").status_code == 200
    console.clock.offset = console.cfg.http_session + 1  # [http] session_minutes later
    r = c.get("/events")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?expired=1")
    assert "Votre session a expiré" in c.get(r.headers["location"]).text


def test_a_form_without_its_csrf_token_is_refused(console):
    c = login(console, "tech")
    r = c.post("/events/1/acknowledge", data={"note": "lampe changée"})
    assert r.status_code == 403 and "Ce formulaire a expiré" in r.text
    r = c.post("/events/1/acknowledge", data={"note": "lampe changée", "csrf": "forged"})
    assert r.status_code == 403
    db = console.db()
    assert db.execute("SELECT ack_by FROM anomalies WHERE id = 1").fetchone() == (None,)
    # the login form too: a page elsewhere cannot log a browser in under its own account
    assert client(console).post("/login", data={"name": "tech", "password": "x"}).status_code == 403


def test_a_viewer_cannot_do_what_a_technician_does(console):
    c = login(console, "lecteur")
    page = c.get("/events").text
    assert "Prendre en compte" not in page and "Retirer" not in c.get("/").text
    csrf = csrf_of(page)
    r = c.post("/events/1/acknowledge", data={"note": "moi aussi", "csrf": csrf})
    assert r.status_code == 403 and "Votre rôle ne permet pas" in r.text
    r = c.post("/nodes/lamp-001/retire", data={"csrf": csrf, "confirm": "yes"})
    assert r.status_code == 403
    db = console.db()
    assert db.execute("SELECT ack_by FROM anomalies WHERE id = 1").fetchone() == (None,)
    assert db.execute("SELECT key IS NOT NULL FROM nodes WHERE id = 'lamp-001'").fetchone() == (1,)


def test_a_technician_acknowledges_an_event_with_a_note_kept_and_owed_to_the_platform(console):
    c = login(console, "tech")
    page = c.get("/events").text
    assert page.index("lamp-001") < page.index("school-01")  # open and newest first
    r = c.post("/events/1/acknowledge", data={"note": "lampe changée", "csrf": csrf_of(page)})
    assert r.status_code == 303
    row = (
        console.db()
        .execute("SELECT ack_by, ack_note, synced_version FROM anomalies WHERE id = 1")
        .fetchone()
    )
    assert row == ("tech", "lampe changée", 0)  # synced_version 0: the outbox takes it again
    shown = re.search(r'<tr id="event-1".*?</tr>', c.get("/events").text, re.S).group(0)
    assert "par tech le" in shown and "lampe changée" in shown


def test_a_technician_retires_a_node(console):
    c = login(console, "tech")
    asked = c.post("/nodes/lamp-002/retire", data={"csrf": csrf_of(c.get("/").text)})
    assert asked.status_code == 200 and "Retirer le capteur lamp-002 ?" in asked.text
    assert 'id="node-lamp-002"' in c.get("/").text  # asked, not done
    r = c.post("/nodes/lamp-002/retire", data={"csrf": csrf_of(asked.text), "confirm": "yes"})
    assert r.status_code == 303
    assert "lamp-002" in c.get(r.headers["location"]).text  # the notice names it
    assert 'id="node-lamp-002"' not in c.get("/").text


def test_login_attempts_are_slowed_then_capped_per_address(console):
    c = client(console)
    csrf = csrf_of(c.get("/login").text)

    def attempt(password):
        return c.post("/login", data={"csrf": csrf, "name": "tech", "password": password})

    assert attempt("wrong-one").status_code == 401
    early = attempt(PASSWORDS["tech"])  # the right one, too early: not even checked
    assert early.status_code == 429 and early.headers["retry-after"] == "1"
    assert "Trop de tentatives" in early.text
    for _ in range(9):  # each wait passed by the clock, not by sleeping
        console.clock.offset += 61
        assert attempt("wrong-again").status_code == 401
    console.clock.offset += 61
    assert attempt(PASSWORDS["tech"]).status_code == 429  # 10 failures: locked out
    console.clock.offset += 15 * 60
    assert attempt(PASSWORDS["tech"]).status_code == 303


def test_api_tokens_for_scripts(console, tmp_path):
    runner = CliRunner()
    config = str(tmp_path / "gateway.toml")
    out = runner.invoke(
        cli, ["token", "add", "tableur", "--role", "viewer", "--config", config, "--json"]
    )
    assert out.exit_code == 0, out.output
    token = json.loads(out.output)["token"]
    c = client(console)
    auth = {"Authorization": f"Bearer {token}"}
    nodes = c.get("/api/nodes", headers=auth).json()
    assert [n["id"] for n in nodes] == ["lamp-001", "lamp-002", "school-01"]
    assert nodes[0]["state"] == "alive" and nodes[0]["battery"] == 87
    events = c.get("/api/events", headers=auth).json()
    assert [e["node"] for e in events] == ["lamp-001", "school-01"]
    assert c.get("/api/summaries?hours=2", headers=auth).status_code == 200
    assert c.get("/api/nodes", headers={"Authorization": "Bearer rvb_nope"}).status_code == 401
    assert c.get("/", headers=auth).status_code == 303  # a token is for /api, not the pages
    runner.invoke(cli, ["token", "remove", "tableur", "--config", config])
    assert c.get("/api/nodes", headers=auth).status_code == 401


def test_metrics_need_a_token_when_not_public(tmp_path):
    c = ConsoleGateway(tmp_path, CONFIG + "\n[http]\nmetrics_public = false\n")
    try:
        db = c.db()
        token = accounts.add_token(db, "prometheus", "viewer")
        db.close()
        http = client(c)
        assert http.get("/metrics").status_code == 401
        r = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "reverbere_readings_stored_total" in r.text
    finally:
        c.stop()


def test_user_commands_read_the_password_from_standard_input(tmp_path):
    runner = CliRunner()
    (tmp_path / "gateway.toml").write_text("")
    config = ["--config", str(tmp_path / "gateway.toml")]
    r = runner.invoke(
        cli, ["user", "add", "anne", "--role", "admin", *config], input="une longue phrase\n"
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["user", "add", "anne", "--role", "admin", *config], input="x" * 12)
    assert r.exit_code == 1 and "exists" in r.output
    r = runner.invoke(cli, ["user", "add", "bob", "--role", "viewer", *config], input="court\n")
    assert r.exit_code == 1 and "at least 10" in r.output
    r = runner.invoke(cli, ["user", "list", "--format", "csv", *config])
    assert r.output.splitlines()[1].startswith("anne,admin,")
    db = open_db(tmp_path / "reverbere.db")
    assert db.execute("SELECT hash FROM console_users").fetchone()[0].startswith("$argon2id$")
    assert accounts.authenticate(db, "anne", "une longue phrase").role == "admin"
    r = runner.invoke(cli, ["user", "passwd", "anne", *config], input="une autre phrase\n")
    assert r.exit_code == 0 and accounts.authenticate(db, "anne", "une longue phrase") is None
    assert runner.invoke(cli, ["user", "remove", "anne", *config]).exit_code == 0
    assert accounts.list_users(db) == []
    db.close()


def test_an_acknowledgement_goes_to_the_platform_with_its_event(tmp_path):
    """The note is synced with the event: the outbox's row for the event (the same
    Observation, updated) carries who acknowledged it, when, and the note."""
    db = open_db(tmp_path / "gw.db")
    db["anomalies"].insert(
        {
            "node": "lamp-001",
            "channel": "p",
            "kind": "lit_by_day",
            "start": 1_700_000_000,
            "score": 0.9,
            "reason": "allumé en plein jour",
            "version": 1,
        }
    )
    feed_outbox(db, settled_at=None)
    first = json.loads(db.execute("SELECT parameters FROM sync_outbox").fetchone()[0])
    assert "ack" not in first
    store.acknowledge(db, 1, "tech", "lampe changée", 1_700_003_600.5)
    assert feed_outbox(db, settled_at=None) == 1  # owed again, though the detector changed nothing
    rows = db.execute("SELECT parameters FROM sync_outbox").fetchall()
    assert len(rows) == 1  # the same row: the platform's Observation is updated, not doubled
    assert json.loads(rows[0][0])["ack"] == {
        "by": "tech",
        "at": 1_700_003_600,
        "note": "lampe changée",
    }
    db.close()


def test_the_demo_makes_a_technician_login_for_its_console(tmp_path):
    from sim.demo import _console_login

    cfg = make_config(tmp_path)
    name, password = _console_login(cfg)  # printed by `reverbere demo` beside the address
    db = open_db(cfg.database)
    assert accounts.authenticate(db, name, password).role == "technician"
    db.close()


def test_an_admin_manages_accounts_and_only_an_admin(console):
    tech = login(console, "tech")
    assert tech.get("/users").status_code == 403
    r = tech.post(
        "/users/add",
        data={
            "csrf": csrf_of(tech.get("/").text),
            "name": "x",
            "role": "admin",
            "password": "x" * 12,
        },
    )
    assert r.status_code == 403  # a technician cannot make themselves an admin
    admin = login(console, "admin")
    page = admin.get("/users")
    assert "Comptes" in page.text and 'id="user-tech"' in page.text
    r = admin.post(
        "/users/add",
        data={
            "csrf": csrf_of(page.text),
            "name": "claire",
            "role": "viewer",
            "password": "une phrase longue",
        },
    )
    assert r.status_code == 303 and "Compte claire ajouté" in admin.get(r.headers["location"]).text
    short = admin.post(
        "/users/add",
        data={"csrf": csrf_of(page.text), "name": "paul", "role": "viewer", "password": "court"},
    )
    assert short.status_code == 400 and "at least 10" in short.text
    assert login(console, "claire", "une phrase longue").get("/").status_code == 200
    r = admin.post("/users/tech/remove", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303
    assert tech.get("/").status_code == 303  # removed: the session ended with the account
    assert admin.post("/users/admin/remove", data={"csrf": csrf_of(page.text)}).status_code == 400


def test_a_technician_adds_a_node_and_sees_its_key_once(console):
    c = login(console, "tech")
    r = c.post("/nodes/add", data={"csrf": csrf_of(c.get("/").text), "node": "lamp-003"})
    assert r.status_code == 200 and "no-store" in r.headers["cache-control"]
    key = re.search(r'<code id="node-key">([0-9a-f]{64})</code>', r.text).group(1)
    row = console.db().execute("SELECT key FROM nodes WHERE id = 'lamp-003'").fetchone()
    assert row[0].hex() == key
    assert 'id="node-lamp-003"' in c.get("/").text and key not in c.get("/").text
    again = c.post("/nodes/add", data={"csrf": csrf_of(c.get("/").text), "node": "lamp-003"})
    assert again.status_code == 400 and "already exists" in again.text


def test_behind_an_https_proxy_the_session_cookie_is_secure(tmp_path):
    c = ConsoleGateway(tmp_path, CONFIG + "\n[http]\nbehind_tls = true\nsession_minutes = 30\n")
    try:
        http = client(c)
        form = http.get("/login")
        assert "Secure" in form.headers["set-cookie"]  # the login form's token too
        csrf = csrf_of(form.text)
        # the client, like a browser, keeps Secure cookies for HTTPS: handed over by hand here
        r = httpx.post(
            c.url + "/login",
            data={"csrf": csrf, "name": "tech", "password": PASSWORDS["tech"]},
            headers={"Cookie": f"reverbere_login={csrf}"},
        )
        (cookie,) = [h for h in r.headers.get_list("set-cookie") if "reverbere_session=" in h]
        assert "Secure" in cookie and "HttpOnly" in cookie and "Max-Age=1800" in cookie
    finally:
        c.stop()
