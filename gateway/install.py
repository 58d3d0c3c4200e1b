"""The systemd unit for this installation of the gateway (``reverbere gateway install-service``).

On Raspberry Pi OS bookworm (Debian 12) ``pip install`` into the system Python is refused
("externally-managed-environment", PEP 668), so the gateway lives in a venv (docs/install.md:
``/opt/reverbere``). Wherever it is, the unit must start *that* installation: ``unit()``
takes the template shipped in the package (gateway/systemd/reverbere.service) and sets
``ExecStart=`` to the ``reverbere`` script beside the interpreter that runs this code, with
``--config``; ``User=``/``Group=`` to the service's account; ``ReadWritePaths=`` to the
database's directory (and ``StateDirectory=`` only when that is /var/lib/reverbere, which
systemd then creates and hands to the account). ``write_unit()`` installs it.
"""

import grp
import importlib.resources
import os
import pwd
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from gateway import config

UNIT_PATH = Path("/etc/systemd/system/reverbere.service")
STATE_DIR = Path("/var/lib/reverbere")  # what the template's StateDirectory=reverbere makes
# What the template's sandbox hides from the service: a database there is not found.
_HIDDEN = {
    "/home": "ProtectHome=yes",
    "/root": "ProtectHome=yes",
    "/run/user": "ProtectHome=yes",
    "/tmp": "PrivateTmp=yes",
    "/var/tmp": "PrivateTmp=yes",
}
# The lines of the template that ``unit()`` sets; the template must have each one.
_SET = ("ExecStart", "User", "Group", "ReadWritePaths", "StateDirectory", "StateDirectoryMode")


class InstallError(Exception):
    """The unit cannot be made or written; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class Unit:
    """A unit file's ``text``, with the ``warnings`` (sentences) about what would fail when
    it runs, e.g. a database in a directory the sandbox hides."""

    text: str
    warnings: list[str] = field(default_factory=list)


def template() -> str:
    """The unit template shipped with the package (package data, read from the installation)."""
    return (
        importlib.resources.files("gateway")
        .joinpath("systemd/reverbere.service")
        .read_text(encoding="utf-8")
    )


def reverbere_command() -> list[str]:
    """The command that runs this installation: the ``reverbere`` script in the running
    interpreter's scripts directory (a venv's ``bin/``), or ``python -m gateway`` with this
    interpreter when there is none (a source checkout). ``sys.executable`` is not resolved:
    a venv's ``bin/python3`` is a link to the system's, and only the link is the venv."""
    script = Path(sysconfig.get_path("scripts")) / "reverbere"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def unit(config_path: Path, user: str = "reverbere", command: list[str] | None = None) -> Unit:
    """The unit that runs ``gateway run --config config_path`` as ``user`` with ``command``
    (default: ``reverbere_command()``). Reads the config (``ConfigError`` if it is wrong:
    the service would fail the same way) for its database's directory."""
    config_path = Path(os.path.abspath(config_path))
    cfg = config.load(config_path)
    data_dir = Path(os.path.abspath(cfg.database)).parent
    command = reverbere_command() if command is None else command
    if not Path(command[0]).is_absolute():
        raise InstallError(f"ExecStart needs an absolute path, got {command[0]!r}")
    try:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:  # no such account yet (write_unit refuses it; a dry run shows the unit)
        group = user
    values = {
        "ExecStart": " ".join(
            _quote(w, exec_word=True)
            for w in [*command, "gateway", "run", "--config", str(config_path)]
        ),
        "User": user,
        "Group": group,
        "ReadWritePaths": _quote(str(data_dir)),
    }
    keep_state_dir = data_dir == STATE_DIR
    lines, seen = [], set()
    for line in template().splitlines():
        key = line.split("=", 1)[0] if "=" in line and not line.startswith("#") else None
        if key in _SET:
            seen.add(key)
            if key in values:
                line = f"{key}={values[key]}"
            elif not keep_state_dir:
                continue  # StateDirectory= would make an unused /var/lib/reverbere
        lines.append(line)
    missing = set(_SET) - seen
    if missing:
        raise InstallError(f"the unit template lacks {', '.join(sorted(missing))}")
    head = (
        f"# Written by `reverbere gateway install-service --config {config_path} --user {user}`:"
        "\n# run it again after moving the installation; local changes: systemctl edit reverbere\n"
    )
    return Unit(head + "\n".join(lines) + "\n", _warnings(config_path, data_dir, user))


def _warnings(config_path: Path, data_dir: Path, user: str) -> list[str]:
    """What would stop the service from reading its config or writing its database."""
    out = []
    for path in dict.fromkeys((config_path.parent, data_dir)):
        for prefix, setting in _HIDDEN.items():
            if path == Path(prefix) or Path(prefix) in path.parents:
                out.append(
                    f"{path} is hidden from the service ({setting} in the unit): keep the "
                    f"config and database under {STATE_DIR}"
                )
    try:
        uid = pwd.getpwnam(user).pw_uid
        owner = data_dir.stat().st_uid
    except (KeyError, OSError):
        return out
    if owner != uid:
        out.append(
            f"{data_dir} is not owned by {user}, who must write the database there: "
            f"chown -R {user}: {data_dir}"
        )
    return out


def write_unit(text: str, user: str, path: Path = UNIT_PATH) -> Path:
    """Write the unit ``text`` to ``path`` (mode 0644, replacing it atomically) and have
    systemd read it again (``systemctl daemon-reload``) when systemd runs this machine.
    Raises ``InstallError`` if ``user`` does not exist (the unit would not start) or the file
    cannot be written."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise InstallError(
            f"no user {user!r} on this machine: create it first (useradd --system --home "
            f"{STATE_DIR} --shell /usr/sbin/nologin {user}), or pass --user"
        ) from None
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # whatever the umask
        os.replace(tmp, path)
    except OSError as e:
        raise InstallError(
            f"cannot write {path}: {e.strerror} (run it as root, e.g. with sudo, or "
            "print the unit with --dry-run)"
        ) from None
    if Path("/run/systemd/system").is_dir():  # sd_booted(3)
        done = subprocess.run(
            ["systemctl", "daemon-reload"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise InstallError(f"wrote {path}, but systemctl daemon-reload failed: {done.stderr}")
    return path


def _quote(word: str, exec_word: bool = False) -> str:
    """``word`` as one word of a unit's setting (systemd.syntax(7), systemd.service(5)):
    ``%`` doubled (specifiers), ``$`` doubled in a command line (variables), quoted when it
    holds a space, a quote or a backslash; control characters are refused."""
    if re.search(r"[\x00-\x1f\x7f]", word):
        raise InstallError(f"a unit cannot name {word!r}: it holds a control character")
    word = word.replace("%", "%%")
    if exec_word:
        word = word.replace("$", "$$")
    if re.search(r"[\s\"'\\;]", word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word
