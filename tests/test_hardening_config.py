"""Issue 13, items 12 and 13: files with secrets are private, and config and database mistakes
are sentences that name the file, not tracebacks or values silently taken."""

import asyncio
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path

import certifi
import pytest
from click.testing import CliRunner
from gateway_helpers import make_config

from gateway import config
from gateway.cli.main import cli
from gateway.service import BindError, Gateway, pipeline_config
from gateway.store.db import DatabaseOpenError, NotADatabase, open_db


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# -- 12. files that hold keys or credentials ---------------------------------------------------


def test_init_writes_config_and_database_for_their_owner_only(tmp_path):
    # The config is where the uplink's token goes: 0644 (the umask's default) showed it to all.
    assert invoke("gateway", "init", tmp_path).exit_code == 0
    assert mode(tmp_path / "gateway.toml") == 0o600
    assert mode(tmp_path / "reverbere.db") == 0o600


def test_node_add_on_a_missing_database_creates_it_private(tmp_path):
    # Before: any command but `gateway init` let SQLite create the key store 0644.
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("")
    assert invoke("node", "add", "lamp-1", "--config", cfg).exit_code == 0
    db = tmp_path / "reverbere.db"
    assert mode(db) == 0o600
    conn = open_db(db)  # while a connection is open, the -wal and -shm exist
    try:
        for suffix in ("-wal", "-shm"):
            assert mode(Path(f"{db}{suffix}")) == 0o600, suffix
    finally:
        conn.close()


def test_a_world_readable_database_is_warned_about(tmp_path, caplog):
    db = tmp_path / "keys.db"
    open_db(db).close()
    os.chmod(db, 0o644)
    with caplog.at_level(logging.WARNING, logger="reverbere.store"):
        open_db(db).close()
    assert f"{db} holds the node keys" in caplog.text and "chmod 600" in caplog.text
    assert mode(db) == 0o644  # a warning, not a change behind the operator's back


def test_a_world_readable_config_is_warned_about_only_with_a_secret(tmp_path, caplog):
    path = tmp_path / "gateway.toml"
    path.write_text('[sync]\nurl = "https://platform/v1.1"\ntoken = "s3cret"\n')
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="reverbere.config"):
        config.load(path)
    assert f"{path} holds sync.token" in caplog.text and "s3cret" not in caplog.text
    caplog.clear()
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING, logger="reverbere.config"):
        config.load(path)
        path.write_text("[coap]\nport = 5683\n")  # nothing secret: 0644 is fine
        os.chmod(path, 0o644)
        config.load(path)
    assert caplog.text == ""


# -- 13. sentences, not tracebacks ---------------------------------------------------------------


def test_a_config_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_bytes('[site]\n# Réverbère\ntimezone = "UTC"\n'.encode("latin-1"))
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert e.value.line == 2 and str(e.value).startswith(f"{path}:2: not UTF-8 text (byte 0xe9)")


def test_a_database_that_is_garbage_or_a_directory_is_named(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, honestly" * 200)
    with pytest.raises(NotADatabase, match=f"^{garbage}: not an SQLite database"):
        open_db(garbage)
    with pytest.raises(NotADatabase, match=f"^{tmp_path}: a directory"):
        open_db(tmp_path)
    missing = tmp_path / "nowhere" / "x.db"
    with pytest.raises(DatabaseOpenError, match=f"the directory {missing.parent} does not exist"):
        open_db(missing)


def _unprivileged(fn) -> str:
    """Run ``fn`` (returning a string) where the directory permissions apply: in a child
    process that gave up root, if the tests run as root (root writes anywhere)."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as e:
            out = f"child failed: {e!r}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


@pytest.mark.parametrize("existing", [True, False])
def test_a_read_only_database_directory_is_named(existing):
    # Before: sqlite3.OperationalError "unable to open database file" (or "attempt to write
    # a readonly database"), naming neither the file nor the directory.
    with tempfile.TemporaryDirectory() as top:
        directory = Path(top) / "ro"
        directory.mkdir()
        db = directory / "reverbere.db"
        if existing:
            open_db(db).close()
            if os.geteuid() == 0:  # the unprivileged child must own the file it opens
                os.chown(db, 65534, 65534)
        os.chmod(directory, 0o555)
        os.chmod(top, 0o755)

        def attempt() -> str:
            try:
                open_db(db).close()
            except DatabaseOpenError as e:
                return str(e)
            return "opened"

        try:
            message = _unprivileged(attempt)
        finally:
            os.chmod(directory, 0o755)
    assert message.startswith(f"{db}: cannot "), message
    assert str(directory) in message


@pytest.mark.parametrize(
    "text, line, key, words",
    [
        ("[coap]\nport = 1\n[stroe]\nmax_queue = 5\n", 3, "stroe", "unknown table"),
        ('[detect.buldings]\nnodes = ["x"]\n', 1, "detect", None),  # a stage's: kept
        ("[syncc.mqtt]\nport = 1\n", 1, "syncc", "unknown table"),
        ("databse = 'x.db'\n", 1, "databse", "unknown table"),
        (
            "[store]\ncommit_delay_ms = 1000000000000000\n",
            2,
            "store.commit_delay_ms",
            "at most 1000",
        ),
        ("[store]\nretry_after_s = 1099511627776\n", 2, "store.retry_after_s", "at most 86400"),
        ("[coap]\n\nmax_past_days = 100000\n", 3, "coap.max_past_days", "at most 3650"),
        ("[coap]\ndedup_max = 100000000\n", 2, "coap.dedup_max", "at most 1000000"),
        ("[node_defaults]\npack = 65\n", 2, "node_defaults.pack", "at most 64"),
        ('[nodes."a"]\ninterval = 86401\n', 2, "nodes.a.interval", "at most 86400"),
    ],
)
def test_unknown_tables_and_out_of_range_numbers_name_file_line_and_key(
    tmp_path, text, line, key, words
):
    path = tmp_path / "g.toml"
    if words is None:  # the stages' own tables pass the loader, for their stage to check
        assert config.loads(text, path).section(key)
        return
    with pytest.raises(config.ConfigError) as e:
        config.loads(text, path)
    assert (e.value.line, e.value.key) == (line, key)
    assert str(e.value).startswith(f"{path}:{line}: {key}: ") and words in str(e.value)


def test_every_number_the_loader_knows_has_a_range():
    for section, keys in config._KEYS.items():
        for key, (_attr, kind, limits, _scale) in keys.items():
            assert kind in (str, bool) or limits is not None, f"{section}.{key}"


def _stage_error(tmp_path: Path, text: str) -> config.ConfigError:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        pipeline_config(config.load(path))
    return e.value


def test_a_missing_or_bad_ca_file_is_named_when_the_config_is_read(tmp_path):
    # Before: accepted, then FileNotFoundError in the sync thread at its first request.
    head = '[sync]\nurl = "https://platform/v1.1"\n'
    e = _stage_error(tmp_path, head + f'ca_file = "{tmp_path}/nope.pem"\n')
    assert (e.line, e.key) == (3, "sync.ca_file") and "cannot read" in str(e)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    e = _stage_error(tmp_path, head + f'ca_file = "{tmp_path}/junk.pem"\n')
    assert "holds no PEM certificate" in str(e)
    e = _stage_error(tmp_path, '[sync]\ntarget = "mqtt"\n[sync.mqtt]\nca_file = "/nope.pem"\n')
    assert (e.line, e.key) == (4, "sync.mqtt.ca_file")
    path = tmp_path / "ok.toml"
    path.write_text(head + f'ca_file = "{certifi.where()}"\n')
    assert pipeline_config(config.load(path)).sync.ca_file == certifi.where()


# [sync] is checked with the link on and off: with target = "none" the section used not to be
# read at all, and a typo waited for the day the link was switched on (then the gateway
# refused to start).
LINK = pytest.mark.parametrize("link", ["", 'target = "none"'], ids=["on", "off"])


@LINK
@pytest.mark.parametrize(
    "url", ["platform.example.org/v1.1", "ftp://platform/v1.1", "https:///v1.1", "http://x:99999/"]
)
def test_the_service_root_must_be_an_http_url(tmp_path, link, url):
    e = _stage_error(tmp_path, f'[sync]\n{link}\nurl = "{url}"\n')
    assert (e.line, e.key) == (3, "sync.url") and "URL" in str(e)


@LINK
@pytest.mark.parametrize(
    "text, line, key, words",
    [
        ("timeout = 1e9\n", 4, "sync.timeout", "at most 3600"),
        ("batch_rows = 0\n", 4, "sync.batch_rows", "at least 1"),
        ("backoff_cap = 1.0\n", 4, "sync.backoff_cap", "backoff_base"),
        ("batch_size = 500\n", 4, "sync.batch_size", "unknown key"),
        ('daily_budget = "lots"\n', 4, "sync.daily_budget", "size like"),
        ("[sync.mqtt]\nkeepalive = 70000\n", 5, "sync.mqtt.keepalive", "65535"),
        ("[sync.mqtt]\nprot = 1883\n", 5, "sync.mqtt.prot", "unknown key"),
    ],
)
def test_sync_keys_are_checked_and_numbers_have_ranges(tmp_path, link, text, line, key, words):
    url = 'url = "http://p/v1.1"' if not link else ""
    e = _stage_error(tmp_path, f"[sync]\n{link}\n{url}\n" + text)
    assert (e.line, e.key) == (line, key) and words in str(e)


def test_a_sync_switched_off_is_no_uplink(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[sync]\ntarget = "none"\ntimeout = 5\n')
    assert pipeline_config(config.load(path)).sync is None


def test_detect_numbers_have_ranges(tmp_path):
    e = _stage_error(tmp_path, "[detect]\nsilent_minutes = 1000000\n")
    assert (e.line, e.key) == (2, "detect.silent_minutes") and "at most 10080" in str(e)
    e = _stage_error(
        tmp_path,
        '[[detect.buildings]]\nnodes = ["s"]\nopen = "08:00"\nclose = "18:00"\n'
        "standby_watts = -1\n",
    )
    assert e.key == "detect.buildings[0].standby_watts" and "negative" in str(e)


def test_binding_failures_name_the_address(tmp_path):
    # Before: aiocoap's ResolutionError or a bare "[Errno 98] Address already in use".
    async def start(**overrides) -> str:
        gw = Gateway(make_config(tmp_path, **overrides))
        with pytest.raises(BindError) as e:
            await gw.start()
        return str(e.value)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        busy = udp.getsockname()[1]
        message = asyncio.run(start(coap_port=busy))
    assert message == f"cannot listen for CoAP on 127.0.0.1:{busy}: the port is in use" + (
        " (another gateway?)"
    )
    message = asyncio.run(start(coap_host="999.1.1.1"))
    assert message.startswith("cannot listen for CoAP on 999.1.1.1:0: not an address")
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        busy = tcp.getsockname()[1]
        message = asyncio.run(start(http_port=busy))
    assert message.startswith(f"cannot listen for HTTP (/metrics) on 127.0.0.1:{busy}: ")
