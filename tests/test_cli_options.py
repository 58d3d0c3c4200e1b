"""One time parser and one HOST:PORT parser for every command (gateway/cli/options.py).

Each case runs through the real commands: a form one command takes, every command takes, and a
bad value is a one-line click error that names the option it was given to.
"""

import pytest
from click.testing import CliRunner

from gateway.cli.main import cli
from gateway.cli.options import parse_hostport
from gateway.render import parse_duration, parse_when

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """An empty gateway database, so the time options are the only thing a command checks."""
    tmp = tmp_path_factory.mktemp("db")
    assert run("gateway", "init", tmp).exit_code == 0
    return tmp / "reverbere.db"


# -- times -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", NOW - 90),
        ("30m", NOW - 1800),
        ("6h", NOW - 6 * 3600),
        ("7d", NOW - 7 * 86400),
        ("1w", NOW - 7 * 86400),
        ("1.5h", NOW - 5400),
        ("2026-01-01", NOW),  # a date is midnight UTC
        ("2026-01-01T01:30", NOW + 5400),  # no zone: UTC
        ("2026-01-01T01:30Z", NOW + 5400),
        ("2026-01-01 01:30:00+01:00", NOW + 1800),  # a zone is honoured
        ("1767225600", NOW),  # Unix seconds
        ("1767225600.5", NOW + 0.5),
    ],
)
def test_the_forms_of_a_time(text, seconds):
    assert parse_when(text, now=NOW) == seconds


@pytest.mark.parametrize("text", ["1w", "36h", "2026-01-01", "2026-01-01T00:00Z", "1767225600"])
@pytest.mark.parametrize(
    "command",
    [
        ("readings", "--since"),
        ("readings", "--until"),
        ("anomalies", "--since"),
        ("summaries", "--since"),
        ("summaries", "--until"),
    ],
)
def test_every_time_option_takes_every_form(db, command, text):
    r = run(*command, text, "--db", db)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "args",
    [
        ("readings", "--since"),
        ("readings", "--until"),
        ("anomalies", "--since"),
        ("summaries", "--since"),
        ("summaries", "--until"),
        ("sim", "fleet", "--start"),
    ],
)
def test_a_bad_time_is_one_line_naming_the_option(db, args):
    r = run(*args, "last tuesday", "--db", db) if args[0] != "sim" else run(*args, "last tuesday")
    assert r.exit_code == 2
    (line,) = [x for x in r.output.splitlines() if x.startswith("Error")]
    assert line == (
        f"Error: Invalid value for '{args[-1]}': 'last tuesday' is not a time: use a duration "
        "ago (90m, 6h, 7d, 1w), an ISO date or time (2026-01-31T12:00Z; UTC if no zone) or "
        "Unix seconds"
    )


def test_a_duration_is_the_same_grammar():
    # `sim fleet --duration 1w` reads as `--since 1w` does; a bare number is seconds there.
    assert parse_duration("1w") == 7 * 86400 and parse_duration("90", default_unit="s") == 90
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("90")  # --since 90 is Unix seconds, not a duration
    r = run("sim", "fleet", "--duration", "a week")
    assert r.exit_code == 2 and "Invalid value for '--duration': 'a week' is not a duration" in (
        r.output
    )


def test_not_a_number_is_not_a_time():
    for text in ("nan", "inf", "", "soon"):
        with pytest.raises(ValueError, match="is not a time"):
            parse_when(text)


# -- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "options", "address"),
    [
        ("127.0.0.1:5683", {}, ("127.0.0.1", 5683)),
        ("[::1]:0", {}, ("::1", 0)),  # IPv6 in brackets; port 0: any free port
        ("localhost:65535", {}, ("localhost", 65535)),  # a name that resolves
        (":5684", {"empty_host": True}, ("", 5684)),  # gateway run: keep the config's host
        ("10.0.0.2", {"default_port": 5683}, ("10.0.0.2", 5683)),  # node flash --gateway
        ("fd00::2", {"default_port": 5683}, ("fd00::2", 5683)),  # bare IPv6: no port after it
        ("::1:5683", {"default_port": 5683}, ("::1:5683", 5683)),  # so this is an address too
        ("[fd00::2]:5700", {"default_port": 5683}, ("fd00::2", 5700)),
    ],
)
def test_the_forms_of_an_address(text, options, address):
    assert parse_hostport(text, **options) == address


BAD_ADDRESSES = [
    ("999.1.1.1:5683", "'999.1.1.1' is not an IPv4 address: it is four numbers from 0 to 255"),
    ("127.0.0.1:65536", "'127.0.0.1:65536': a port is 0 to 65535, not 65536"),
    ("[::1]:99999", "a port is 0 to 65535, not 99999"),
    ("::1:5683", "write an IPv6 address in brackets, as in [::1]:5683"),
    ("[fe80::zz]:5683", "'fe80::zz' is not an IPv6 address"),
    ("no-such-gateway.invalid:5683", "the host name 'no-such-gateway.invalid' does not resolve"),
    ("127.0.0.1:coap", "the port 'coap' is not a number"),
]
ADDRESS_OPTIONS = [
    ("gateway", "run", "--coap"),
    ("gateway", "run", "--http"),
    ("node", "flash", "--port", "/dev/null", "--node-id", "n1", "--gateway"),
    ("sim", "fleet", "--gateway"),
    ("sim", "net", "--listen"),
    ("sim", "net", "--upstream"),
]


@pytest.mark.parametrize(
    ("args", "text", "why"),
    [
        pytest.param(args, text, why, id=f"{args[1]} {args[-1]} {text}")
        for args in ADDRESS_OPTIONS
        for text, why in BAD_ADDRESSES
        # With a default port (node flash), ::1:5683 is an IPv6 address (see above).
        if not (text == "::1:5683" and args[1] == "flash")
    ],
)
def test_a_bad_address_is_one_line_naming_the_option(args, text, why):
    r = run(*args, text)
    assert r.exit_code == 2
    (line,) = [x for x in r.output.splitlines() if x.startswith("Error")]
    assert line.startswith(f"Error: Invalid value for '{args[-1]}': ") and why in line


def test_a_port_is_needed_where_there_is_no_default():
    with pytest.raises(ValueError, match="has no port"):
        parse_hostport("127.0.0.1")
    with pytest.raises(ValueError, match="has no host"):
        parse_hostport(":5683")  # only `gateway run` keeps the config's host
