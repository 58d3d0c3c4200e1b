"""The console's accounts and API tokens: ``reverbere user add|list|remove|passwd`` and
``reverbere token add|list|remove``. A thin shell over ``gateway.console.accounts``.

A password is read from standard input (the first line), never from the command line where
``ps`` and the shell's history would keep it: ``reverbere user add anne --role viewer``
asks for it twice on a terminal; ``echo "$PW" | reverbere user add ...`` in a script.
"""

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from sqlite_utils import Database

from gateway.cli.display import excel_option, show, town_timezone, utc_option
from gateway.cli.options import config_option, format_option, load_config, open_database
from gateway.console import accounts

ROLE = click.Choice(accounts.ROLES)


def _password() -> str:
    if sys.stdin.isatty():
        return click.prompt("password", hide_input=True, confirmation_prompt=True)
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise click.ClickException("no password on standard input (one line)")
    return line


@contextmanager
def _accounts(config_path: Path, create: bool = False) -> Iterator[Database]:
    """The gateway's database for one command, closed after it; the library's
    ``AccountError`` becomes the command's one-line error."""
    db = open_database(config_path, create=create)
    try:
        yield db
    except accounts.AccountError as e:
        raise click.ClickException(str(e)) from None
    finally:
        db.close()


@click.group("user")
def user_group() -> None:
    """People who log in to the web console, each with a role: viewer (reads), technician
    (also acknowledges events, adds and retires nodes), admin (also manages accounts)."""


@user_group.command("add")
@click.argument("name")
@click.option("--role", type=ROLE, required=True, help="What the person may do.")
@config_option
def user_add(name: str, role: str, config_path: Path) -> None:
    """Create the account NAME; its password is read from standard input."""
    with _accounts(config_path, create=True) as db:
        accounts.add_user(db, name, role, _password())
    cfg = load_config(config_path)
    click.echo(f"user {name} ({role}) added: log in at http://{cfg.http_host}:{cfg.http_port}/")


@user_group.command("list")
@config_option
@format_option
@utc_option
@excel_option
def user_list(config_path: Path, fmt: str, utc: bool, excel: bool | None) -> None:
    """Every account with its role and when it was made (the town's time zone; --utc)."""
    tz = town_timezone(config_path, None, utc)
    with _accounts(config_path) as db:
        users = accounts.list_users(db)
    rows = [{"name": u.name, "role": u.role, "created": u.created} for u in users]
    text = show(rows, ["name", "role", "created"], fmt, tz, excel, times=("created",))
    click.echo(text, nl=not text.endswith("\n"))  # Excel's CSV ends its last line


@user_group.command("remove")
@click.argument("name")
@config_option
def user_remove(name: str, config_path: Path) -> None:
    """Delete the account NAME; its open sessions end at once."""
    with _accounts(config_path) as db:
        accounts.remove_user(db, name)
    click.echo(f"user {name} removed")


@user_group.command("passwd")
@click.argument("name")
@config_option
def user_passwd(name: str, config_path: Path) -> None:
    """Set NAME's password (from standard input); its open sessions end."""
    with _accounts(config_path) as db:
        accounts.set_password(db, name, _password())
    click.echo(f"password of {name} changed; their sessions ended")


@click.group("token")
def token_group() -> None:
    """API tokens for scripts: GET /api/nodes, /api/events, /api/summaries with
    `Authorization: Bearer TOKEN` (docs/console.md)."""


@token_group.command("add")
@click.argument("name")
@click.option("--role", type=ROLE, default="viewer", show_default=True)
@click.option("--json", "as_json", is_flag=True, help='Print {"token": "..."} only.')
@config_option
def token_add(name: str, role: str, as_json: bool, config_path: Path) -> None:
    """Make the token NAME and print it: it is shown once (only its digest is kept)."""
    with _accounts(config_path, create=True) as db:
        token = accounts.add_token(db, name, role)
    if as_json:
        click.echo(json.dumps({"token": token}))
    else:
        click.echo(token)
        click.echo(f"token {name} ({role}): keep it now, it is not shown again", err=True)


@token_group.command("list")
@config_option
@format_option
@utc_option
@excel_option
def token_list(config_path: Path, fmt: str, utc: bool, excel: bool | None) -> None:
    """Every token's name, role, and when it was made and last used (never the token); times
    in the town's time zone (--utc for UTC)."""
    tz = town_timezone(config_path, None, utc)
    with _accounts(config_path) as db:
        tokens = accounts.list_tokens(db)
    rows = [
        {"name": t.name, "role": t.role, "created": t.created, "last_used": t.last_used}
        for t in tokens
    ]
    cols = ["name", "role", "created", "last_used"]
    text = show(rows, cols, fmt, tz, excel, times=("created", "last_used"))
    click.echo(text, nl=not text.endswith("\n"))  # Excel's CSV ends its last line


@token_group.command("remove")
@click.argument("name")
@config_option
def token_remove(name: str, config_path: Path) -> None:
    """Revoke the token NAME at once."""
    with _accounts(config_path) as db:
        accounts.remove_token(db, name)
    click.echo(f"token {name} revoked")


def register(cli: click.Group) -> None:
    """Add ``user`` and ``token`` to ``reverbere``."""
    cli.add_command(user_group)
    cli.add_command(token_group)
