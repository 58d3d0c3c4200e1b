"""The console's accounts: people (name, role, argon2 hash), their sessions, and API tokens.

Three roles, each including the one before: a ``viewer`` reads; a ``technician`` also
acknowledges events and adds or retires nodes; an ``admin`` also manages accounts.

Passwords are hashed with argon2id (``argon2-cffi``'s defaults, RFC 9106's low-memory
profile: 64 MiB, 3 passes), memory-hard so that a stolen database costs an attacker as much
memory as time per guess. Session ids and API tokens are 32 random bytes: no guessing to slow
down, so only their SHA-256 is stored (a stolen database does not log anyone in) and looked
up by primary key, without a hash costing 64 MiB on every request.

Every function takes a ``sqlite_utils.Database`` and does plain SQL: the CLI
(``gateway.cli.users``) calls them on its own connection, the console through
:class:`gateway.console.store.ConsoleStore`'s thread, never on the event loop.
"""

import hashlib
import secrets
import time
from dataclasses import dataclass

import argon2
import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.console import daily
from gateway.console.i18n import N_

migrations = Migrations("reverbere.console")

ROLES = (N_("viewer"), N_("technician"), N_("admin"))  # each may do what the ones before it may
NAME_MAX = 64
PASSWORD_MIN = 10  # characters; a long passphrase beats a short complicated one
LAST_USED_STEP = 60.0  # seconds: how precisely a token's last use is kept

_hasher = argon2.PasswordHasher()
# Checked against when the name is unknown, so that an unknown name takes as long as a
# wrong password (no telling which names exist from the time an answer takes).
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@migrations()
def m001_accounts(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE console_users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            hash TEXT NOT NULL,                -- argon2id, with its parameters and salt
            created REAL NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE console_sessions (
            id TEXT PRIMARY KEY,               -- SHA-256 of the cookie's value
            user TEXT NOT NULL REFERENCES console_users(name) ON DELETE CASCADE,
            csrf TEXT NOT NULL,                -- the token every form of this session carries
            created REAL NOT NULL,
            expires REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX console_sessions_expires ON console_sessions (expires)")
    db.execute(
        """
        CREATE TABLE console_tokens (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,         -- SHA-256 of the token
            created REAL NOT NULL,
            last_used REAL
        )
        """
    )
    # An operator's acknowledgement of an anomaly event, kept with the event and synced with
    # it (gateway.pipeline.handoff reads these columns).
    for column in ("ack_by", "ack_at", "ack_note"):
        db.execute(
            f"ALTER TABLE anomalies ADD COLUMN {column} {'REAL' if column == 'ack_at' else 'TEXT'}"
        )
    # The events page lists the open events, however old, newest first: this partial index
    # holds only them, so the list never scans the closed ones.
    db.execute('CREATE INDEX console_open_anomalies ON anomalies (start) WHERE "end" IS NULL')


@migrations()
def m002_energy_days(db: sqlite_utils.Database) -> None:
    # The month's report (the Energy page's download, ``reverbere report``) reads the energy
    # channels' summaries by hour range: without this index, a scan of every summary.
    db.execute("CREATE INDEX console_summaries_energy ON summaries (channel, hour)")
    # Each node's energy per local day, kept by triggers as summaries are written
    # (gateway/console/daily.py): the Energy page reads these, not a month of summaries.
    daily.create(db)


@migrations()
def m003_energy_days_when(db: sqlite_utils.Database) -> None:
    # m002's triggers ran for every summary row, whatever its channel: in the writer's
    # transaction, only the energy channels' rows need them (gateway/console/daily.py).
    daily.energy_only(db)


class AccountError(Exception):
    """A refused account operation; ``str()`` is a sentence for a person."""


class UserExists(AccountError):
    pass


class UserNotFound(AccountError):
    pass


class BadAccount(AccountError):
    """A name, role or password that is not acceptable."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created: float


def can(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (roles include the ones before them)."""
    return ROLES.index(role) >= ROLES.index(needed)


def _check(name: str, role: str | None = None, password: str | None = None) -> None:
    if not name or len(name) > NAME_MAX or not name.isprintable() or name.strip() != name:
        raise BadAccount(f"bad name {name!r}: 1 to {NAME_MAX} printable characters")
    if role is not None and role not in ROLES:
        raise BadAccount(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    if password is not None and len(password) < PASSWORD_MIN:
        raise BadAccount(f"password too short: at least {PASSWORD_MIN} characters")


def add_user(db: sqlite_utils.Database, name: str, role: str, password: str) -> User:
    """Create an account; ``UserExists`` if the name is taken."""
    _check(name, role, password)
    user = User(name, role, time.time())
    with db.conn:
        if db.execute("SELECT 1 FROM console_users WHERE name = ?", [name]).fetchone():
            raise UserExists(f"user {name!r} exists (reverbere user passwd to change it)")
        db.execute(
            "INSERT INTO console_users (name, role, hash, created) VALUES (?, ?, ?, ?)",
            [name, role, _hasher.hash(password), user.created],
        )
    return user


def list_users(db: sqlite_utils.Database) -> list[User]:
    rows = db.execute("SELECT name, role, created FROM console_users ORDER BY name").fetchall()
    return [User(*r) for r in rows]


def remove_user(db: sqlite_utils.Database, name: str) -> None:
    """Delete the account and its sessions (it is logged out at its next request)."""
    with db.conn:
        db.execute("DELETE FROM console_sessions WHERE user = ?", [name])
        if db.execute("DELETE FROM console_users WHERE name = ?", [name]).rowcount == 0:
            raise UserNotFound(f"no user {name!r} (reverbere user list)")


def set_password(db: sqlite_utils.Database, name: str, password: str) -> None:
    """A new password; the account's open sessions end (whoever knew the old one is out)."""
    _check(name, password=password)
    with db.conn:
        cur = db.execute(
            "UPDATE console_users SET hash = ? WHERE name = ?", [_hasher.hash(password), name]
        )
        if cur.rowcount == 0:
            raise UserNotFound(f"no user {name!r} (reverbere user list)")
        db.execute("DELETE FROM console_sessions WHERE user = ?", [name])


def authenticate(db: sqlite_utils.Database, name: str, password: str) -> User | None:
    """The user if ``password`` is theirs, else None (an unknown name costs the same time).
    A hash made with older parameters is replaced by one with the current ones."""
    row = db.execute(
        "SELECT hash, role, created FROM console_users WHERE name = ?", [name]
    ).fetchone()
    try:
        _hasher.verify(row[0] if row else _DUMMY_HASH, password)
    except argon2.exceptions.VerificationError:
        return None
    except argon2.exceptions.InvalidHashError:
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(row[0]):
        with db.conn:
            db.execute(
                "UPDATE console_users SET hash = ? WHERE name = ?", [_hasher.hash(password), name]
            )
    return User(name, row[1], row[2])


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf: str
    expires: float


def open_session(db: sqlite_utils.Database, user: str, lifetime: float, now: float) -> str:
    """A new session for ``user`` lasting ``lifetime`` seconds; returns the cookie's value.
    Expired sessions are deleted here (by the expiry index), so the table stays small."""
    cookie = secrets.token_urlsafe(32)
    with db.conn:
        db.execute("DELETE FROM console_sessions WHERE expires <= ?", [now])
        db.execute(
            "INSERT INTO console_sessions (id, user, csrf, created, expires)"
            " VALUES (?, ?, ?, ?, ?)",
            [_digest(cookie), user, secrets.token_urlsafe(32), now, now + lifetime],
        )
    return cookie


def session(db: sqlite_utils.Database, cookie: str, now: float) -> Session | None:
    """The live session of this cookie, or None (unknown, expired, or its user removed)."""
    row = db.execute(
        "SELECT s.user, u.role, s.csrf, s.expires FROM console_sessions s"
        " JOIN console_users u ON u.name = s.user WHERE s.id = ? AND s.expires > ?",
        [_digest(cookie), now],
    ).fetchone()
    return None if row is None else Session(*row)


def close_session(db: sqlite_utils.Database, cookie: str) -> None:
    with db.conn:
        db.execute("DELETE FROM console_sessions WHERE id = ?", [_digest(cookie)])


@dataclass(frozen=True)
class Token:
    name: str
    role: str
    created: float
    last_used: float | None


def add_token(db: sqlite_utils.Database, name: str, role: str) -> str:
    """A new API token; returns it (shown once: only its digest is kept)."""
    _check(name, role)
    token = "rvb_" + secrets.token_urlsafe(32)
    with db.conn:
        if db.execute("SELECT 1 FROM console_tokens WHERE name = ?", [name]).fetchone():
            raise UserExists(f"token {name!r} exists (reverbere token remove {name} first)")
        db.execute(
            "INSERT INTO console_tokens (name, role, hash, created) VALUES (?, ?, ?, ?)",
            [name, role, _digest(token), time.time()],
        )
    return token


def list_tokens(db: sqlite_utils.Database) -> list[Token]:
    rows = db.execute(
        "SELECT name, role, created, last_used FROM console_tokens ORDER BY name"
    ).fetchall()
    return [Token(*r) for r in rows]


def remove_token(db: sqlite_utils.Database, name: str) -> None:
    with db.conn:
        if db.execute("DELETE FROM console_tokens WHERE name = ?", [name]).rowcount == 0:
            raise UserNotFound(f"no token {name!r} (reverbere token list)")


def token_role(db: sqlite_utils.Database, token: str, now: float) -> tuple[str, str] | None:
    """``(name, role)`` of this API token, or None; records when it was last used (to the
    minute: a script polling every second does not write to the database every second)."""
    digest = _digest(token)
    row = db.execute(
        "SELECT name, role, last_used FROM console_tokens WHERE hash = ?", [digest]
    ).fetchone()
    if row is None:
        return None
    if row[2] is None or now - row[2] >= LAST_USED_STEP:
        with db.conn:
            db.execute("UPDATE console_tokens SET last_used = ? WHERE hash = ?", [now, digest])
    return row[0], row[1]
