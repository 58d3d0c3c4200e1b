"""Installing on a Pi (docs/install.md): the unit `gateway install-service` writes starts the
installation that wrote it (a venv under /opt/reverbere, not /usr/local/bin), systemd accepts
it as it is, and the documented install (a venv of Debian's own python3, pip install from the
source tree) gives a `reverbere` that initialises, writes its unit and runs a gateway that
answers a node."""

import asyncio
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from gateway_helpers import con_post, exchange, minute_readings

from gateway import config, install, service
from gateway.cli.main import cli
from protocols import cose, senml
from protocols.const import CHANGED

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
DEBIAN_PYTHON = Path("/usr/bin/python3")
WHERE = "import sys, gateway; print(sys.base_prefix, gateway.__file__)"
LOOPBACK = ["--coap", "127.0.0.1:0", "--http", "127.0.0.1:0"]


def exec_start(text: str) -> str:
    (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


def settings(text: str, key: str) -> list[str]:
    return [x.split("=", 1)[1] for x in text.splitlines() if x.startswith(key + "=")]


def verify(unit_file: Path) -> str:
    """`systemd-analyze verify`: its complaints about the unit (unknown keys, bad values, an
    ExecStart that is not executable) are printed, not reflected in the exit code alone."""
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit_file)], capture_output=True, text=True, timeout=60
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return "\n".join(line for line in out.splitlines() if unit_file.name in line)


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    return service.init_dir(tmp_path / "data")


def test_the_unit_runs_the_given_installation_with_its_config(initialised):
    command = ["/opt/reverbere/bin/reverbere"]
    made = install.unit(initialised, "reverbere", command)
    assert exec_start(made.text) == (
        f"/opt/reverbere/bin/reverbere gateway run --config {initialised}"
    )
    assert settings(made.text, "User") == ["reverbere"]
    assert settings(made.text, "ReadWritePaths") == [str(initialised.parent)]
    # Not /var/lib/reverbere: no StateDirectory= that would make an unused one.
    assert settings(made.text, "StateDirectory") == []
    # /tmp is private to the service: the operator is told before it fails to start.
    assert any("PrivateTmp=yes" in w for w in made.warnings)


def test_the_state_directory_stays_when_the_data_is_there(initialised, monkeypatch):
    monkeypatch.setattr(install, "STATE_DIR", initialised.parent)
    made = install.unit(initialised, "reverbere", ["/opt/reverbere/bin/reverbere"])
    assert settings(made.text, "StateDirectory") == ["reverbere"]
    assert settings(made.text, "StateDirectoryMode") == ["0700"]


def test_the_command_is_the_script_beside_the_running_interpreter():
    """In a venv, sys.executable is the venv's link (not resolved) and the script its sibling."""
    (command,) = install.reverbere_command()
    assert command == str(Path(sys.executable).parent / "reverbere")


def test_the_unit_says_notify_watchdog_and_starts_offline():
    text = install.template()
    assert settings(text, "Type") == ["notify"]
    assert settings(text, "WatchdogSec") == ["120"]
    # Wants=time-sync.target or network-online.target would hold the start until NTP or the
    # uplink answers; a street-light gateway must take readings offline.
    assert not [x for x in text.splitlines() if x.startswith("Wants=")]
    after = " ".join(settings(text, "After")).split()
    assert "time-set.target" in after and "time-sync.target" not in after
    assert "network-online.target" not in after
    assert "Documentation=" not in text  # it named a file nothing installs
    # gateway/clock.py asks the kernel (adjtimex) every 10 s: outside the allow-list it would
    # be killed with SIGSYS, and ProtectClock=yes blocks the call whole.
    assert "adjtimex" in settings(text, "SystemCallFilter")
    assert settings(text, "ProtectClock") == [] and settings(text, "CapabilityBoundingSet") == [""]
    assert settings(text, "SystemCallErrorNumber") == ["EPERM"]
    assert "/usr/local/bin" not in exec_start(text)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze (apt: systemd) missing")
def test_systemd_accepts_the_unit_even_with_awkward_paths(tmp_path):
    """Spaces and % in paths are quoted and escaped as systemd.syntax(7) says."""
    config_path = service.init_dir(tmp_path / "my data 100%")
    made = install.unit(config_path, "reverbere", [sys.executable, "-m", "gateway"])
    unit_file = tmp_path / "reverbere.service"
    unit_file.write_text(made.text)
    assert verify(unit_file) == ""
    assert exec_start(made.text).endswith(f'--config "{tmp_path}/my data 100%%/gateway.toml"')
    # The sandbox stays tight (systemd's own score: 0 best, 10 worst).
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout + done.stderr)
    assert score is not None and float(score.group(1)) <= 2.0, done.stdout[-500:]


def test_install_service_writes_the_unit_and_refuses_an_unknown_user(initialised, tmp_path):
    me = pwd.getpwuid(os.getuid()).pw_name
    target = tmp_path / "reverbere.service"
    args = ["gateway", "install-service", "--config", str(initialised), "--unit", str(target)]
    result = CliRunner().invoke(cli, [*args, "--user", me])
    assert result.exit_code == 0, result.output
    assert f"wrote {target}; next: systemctl enable --now reverbere" in result.output
    assert settings(target.read_text(), "User") == [me]
    assert target.stat().st_mode & 0o777 == 0o644
    result = CliRunner().invoke(cli, [*args, "--user", "no-such-user-here"])
    assert result.exit_code == 1
    assert "no user 'no-such-user-here' on this machine: create it first" in result.output


def test_the_generated_config_puts_the_site_in_one_place_and_zone(initialised):
    """The template's [site] is Paris: its time zone must be Paris's, not UTC (the lamps'
    hours and the reasons would be an hour or two off)."""
    site = service.pipeline_config(config.load(initialised)).detect
    assert (site.latitude, site.longitude, site.timezone) == (48.8566, 2.3522, "Europe/Paris")


# --- The documented install, end to end --------------------------------------------------------


def _source_copy(dest: Path) -> Path:
    """The working tree's files (tracked and new, not ignored) copied to ``dest``: pip builds
    in the source tree, and the shared checkout must not get its build/ directory."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.skipif(not DEBIAN_PYTHON.exists(), reason="not a Debian machine (/usr/bin/python3)")
def test_the_documented_install_into_a_venv_of_debians_python(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    venv = tmp_path / "opt-reverbere"
    made = subprocess.run(
        [str(DEBIAN_PYTHON), "-m", "venv", str(venv)], capture_output=True, text=True, env=env
    )
    assert made.returncode == 0, f"apt-get install python3-venv? {made.stderr}"
    src = _source_copy(tmp_path / "src")
    pip = subprocess.run(
        [str(venv / "bin/pip"), "install", "-q", str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    reverbere = venv / "bin/reverbere"
    base = subprocess.run(
        [str(venv / "bin/python"), "-c", WHERE],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout, whose gateway/ `python -c` would import
        check=True,
    ).stdout.split()
    assert base[0] == "/usr" and base[1].startswith(str(venv))  # Debian's, and not our checkout

    def run(*args: str) -> str:
        done = subprocess.run(
            [str(reverbere), *args], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    data = tmp_path / "var-lib-reverbere"
    run("gateway", "init", str(data))
    config_path = data / "gateway.toml"
    unit_text = run("gateway", "install-service", "--config", str(config_path), "--dry-run")
    assert exec_start(unit_text) == f"{reverbere} gateway run --config {config_path}"
    if SYSTEMD_ANALYZE is not None:
        unit_file = tmp_path / "reverbere.service"
        unit_file.write_text(unit_text)
        assert verify(unit_file) == ""
    added = json.loads(run("node", "add", "lamp-001", "--json", "--config", str(config_path)))
    key = bytes.fromhex(added["key"])

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    gateway = subprocess.Popen(
        [str(reverbere), "gateway", "run", "--config", str(config_path), *LOOPBACK],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "NOTIFY_SOCKET": str(tmp_path / "notify")},
        cwd=tmp_path,  # the store's writer process is a `python -c`
    )
    try:
        assert notify.recv(4096).startswith(b"READY=1")  # listening
        for line in gateway.stderr:  # JSON lines (not a terminal); the ports are in the first
            listening = json.loads(line)
            if listening["msg"] == "gateway listening":
                break
        coap_port = listening["coap_port"]
        body = cose.sign(key, b"lamp-001", 1, senml.encode(minute_readings(5)))
        (answer,) = asyncio.run(exchange(coap_port, con_post(body, 1)))
        assert answer.code == CHANGED  # 2.04: stored, after the commit
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(timeout=60) == 0
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        notify.close()
    stored = run("readings", "--config", str(config_path), "--format", "csv")
    assert len(stored.splitlines()) == 1 + 5
