"""What several ``reverbere`` commands share, defined once: options, the parameter types that
read a time, a duration or an address, and opening the gateway's database with a hint.

Each parameter type turns a bad value into a click error naming the option, on one line
(``Invalid value for '--since': 'soon' is not a time: use ...``); the sim commands use the same
ones, so a form one command takes, every command takes.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway import render

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.store.db import Database

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="gateway.toml",
    show_default=True,
    envvar="REVERBERE_CONFIG",
    help="The gateway's TOML config (env REVERBERE_CONFIG).",
)
db_option = click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's database file, instead of the one the config names.",
)
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(render.FORMATS),
    default="table",
    show_default=True,
    help="An aligned table, CSV with a header, or JSON (times as ISO 8601 UTC).",
)


def number_option(
    *names: str,
    within: tuple[float | None, float | None],
    default: float | None = None,
    help: str | None = None,
    **extra: Any,
) -> Any:
    """``click.option(*names)`` for a number within ``within`` (lowest, highest; None: no
    bound), its default shown in ``--help``: whole numbers when the bounds and the default
    are, else any number. Every bounded number of the commands (``fleet update --canary``,
    ``sim fleet --nodes``, ``sim net --loss``...) says its range the same way, and a value
    out of it is one line naming the option."""
    whole = not any(isinstance(x, float) for x in (*within, default))
    kind = click.IntRange(*within) if whole else click.FloatRange(*within)
    shown = default is not None
    return click.option(*names, type=kind, default=default, show_default=shown, help=help, **extra)


class When(click.ParamType):
    """A point in time as :func:`gateway.render.parse_when` reads it, as Unix seconds."""

    name = "when"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "WHEN"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return render.parse_when(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class Duration(click.ParamType):
    """A length of time in seconds (``90s``, ``30m``, ``6h``, ``1d``, ``1w``; a bare number
    is seconds): :func:`gateway.render.parse_duration`, the grammar of ``--since 6h``."""

    name = "duration"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return render.parse_duration(value, default_unit="s")
        except ValueError as e:
            self.fail(str(e), param, ctx)


WHEN = When()
DURATION = Duration()

_HOSTPORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*))(?::(?P<port>[^:]*))?")


def parse_hostport(
    text: str, default_port: int | None = None, empty_host: bool = False
) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port): ``127.0.0.1:5683``, ``[::1]:5683``, ``gw.local:5683``;
    with a ``default_port``, ``HOST`` alone too (and a bare IPv6 address). Raises
    ``ValueError`` with a sentence.

    The host is checked now rather than when it is used, where the error would come late and
    unexplained: numbers and dots must be an IPv4 address (``999.1.1.1`` is not), a bracketed
    host an IPv6 address, and a name must resolve. ``empty_host`` allows ``:PORT`` (the host
    stays what the config says); the host returned is then ``""``.
    """
    text = text.strip()
    example = "e.g. 127.0.0.1:5683, [::1]:5683 or gw.local:5683"
    if default_port is not None and text.count(":") > 1 and not text.startswith("["):
        host, v6, port_text = text, text, None  # a bare IPv6 address: no port can follow it
    else:
        m = _HOSTPORT.fullmatch(text)
        if not m and text.count(":") > 1:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:5683")
        if not m:
            raise ValueError(f"{text!r} is not HOST:PORT ({example})")
        v6, port_text = m.group("v6"), m.group("port")
        host = v6 if v6 is not None else m.group("host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port: write HOST:PORT ({example})")
        port = default_port
    elif not port_text.isdigit():
        raise ValueError(f"{text!r}: the port {port_text!r} is not a number ({example})")
    else:
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"{text!r}: a port is 0 to 65535, not {port}")
    if v6 is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif not host:
        if not empty_host:
            raise ValueError(f"{text!r} has no host ({example})")
    elif re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{host!r} is not an IPv4 address: it is four numbers from 0 to 255 "
                "separated by dots"
            ) from None
    else:
        try:
            socket.getaddrinfo(host, None)
        except (OSError, UnicodeError):
            raise ValueError(
                f"the host name {host!r} does not resolve to an address here: check it, or "
                "give an IP address"
            ) from None
    return host, port


class HostPort(click.ParamType):
    """An address a command binds to or sends to, as (host, port): :func:`parse_hostport`."""

    name = "host:port"

    def __init__(self, default_port: int | None = None, empty_host: bool = False) -> None:
        self.default_port = default_port
        self.empty_host = empty_host

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "HOST:PORT" if self.default_port is None else "HOST[:PORT]"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_hostport(value, self.default_port, self.empty_host)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> Config:
    """The checked config, or a click error saying where it is wrong and what to do."""
    from gateway import config

    try:
        return config.load(path, overrides)
    except config.ConfigError as e:
        raise click.ClickException(
            f"{e}\n  hint: `reverbere gateway init DIR` writes a commented example"
        ) from None


def open_database(config_path: Path, db_path: Path | None = None, create: bool = False) -> Database:
    """The gateway's database for a command: ``--db`` if given, else the one the config names.

    The one place where a missing or wrong database becomes a message with a hint. Only a
    command that registers a node (``create``) makes the file, as the service would; the others
    refuse a path that is not the gateway's database (:func:`gateway.store.db.open_checked`).
    """
    from gateway.store.db import DatabaseOpenError, NoDatabase, NotADatabase, open_checked

    if db_path is None:
        db_path = load_config(config_path).database
    try:
        return open_checked(db_path, create)
    except NoDatabase as e:
        raise click.ClickException(
            f"no database at {e.path}\n  hint: has the gateway run yet (`reverbere gateway run`)?"
            " `reverbere gateway init DIR` creates one"
        ) from None
    except NotADatabase as e:
        raise click.ClickException(
            f"{e}\n  hint: name the gateway's database file (`[gateway] database` in its "
            "config), or its config with --config"
        ) from None
    except DatabaseOpenError as e:  # there, but not usable (permissions, damage)
        raise click.ClickException(str(e)) from None
