"""``reverbere node flash`` and ``node doctor``: a technician and a node on a USB cable.

Thin shell over :mod:`gateway.provision.flash`: one library call per command; the library's
exceptions become a message with what to check.
"""

from __future__ import annotations

import sys
from typing import TextIO

import click

from gateway.cli.options import HostPort
from protocols.const import DEFAULT_PORT


class _Bar:
    """gateway.provision.flash.Progress for a person: what it does now, then the writing.

    On a terminal, each step is a line and the writing one bar redrawn in place, which ends
    at N/N files (the last file's line is drawn before the next step). Elsewhere (a pipe, a
    log, CI) nothing is redrawn: one line per step and one per file written.
    """

    WIDTH = 24

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.tty = (stream or sys.stdout).isatty()
        self.files = self.total_files = 0
        self.done = self.total = 0
        self.open = False  # a bar line is drawn and not ended

    def _echo(self, text: str, nl: bool = True) -> None:
        click.echo(text, file=self.stream, nl=nl)

    def step(self, text: str) -> None:
        self.close()
        self._echo(f"{text}...")

    def start(self, total_bytes: int, total_files: int) -> None:
        self.total, self.total_files = total_bytes, total_files
        self.done = self.files = 0
        if total_files:
            self._echo(f"Writing {total_files} files ({total_bytes} bytes to send)")
            self._draw()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self._draw()

    def file_done(self, path: str) -> None:
        self.files += 1
        if self.tty:
            self._draw()
        else:
            self._echo(f"  {self.files}/{self.total_files} {path}")

    def _draw(self) -> None:
        if not self.tty or not self.total_files:
            return
        frac = self.done / self.total if self.total else self.files / self.total_files
        full = round(self.WIDTH * min(frac, 1.0))
        bar = "#" * full + "-" * (self.WIDTH - full)
        self._echo(f"\r  [{bar}] {self.files}/{self.total_files} files", nl=False)
        self.open = True

    def close(self) -> None:
        if self.open:
            self._echo("")
            self.open = False


def _key(node_id: str, key_file: str | None, config: str | None, replace: bool) -> bytes:
    from gateway.provision.flash import FlashError, gateway_key, load_key

    if replace and not config:
        raise FlashError(
            f"--replace needs --config GATEWAY_TOML (the gateway's database on this machine); "
            f"elsewhere run `reverbere node replace {node_id} --json > {node_id}.json` at the "
            f"gateway and pass --key-file {node_id}.json"
        )
    if key_file:
        return load_key(key_file, node_id)
    if config:
        try:
            return gateway_key(config, node_id, replace=replace)
        except ImportError:
            raise FlashError(
                "this build has no gateway registry: make the key at the gateway "
                f"(reverbere node add {node_id} --json > {node_id}.json) and pass --key-file"
            ) from None
    raise FlashError(
        f"no key: pass --config GATEWAY_TOML (registers {node_id} in the gateway's database) "
        f"or --key-file FILE (made at the gateway: reverbere node add {node_id} --json)"
    )


def _port(port: str) -> str:
    """``--port``: a device, or ``auto`` for the one port that looks like a board."""
    from gateway.provision import ports

    if port != "auto":
        return port
    try:
        return ports.auto()
    except ports.PortError as e:
        raise click.ClickException(str(e)) from None


PORT_HELP = "Serial port of the node, e.g. /dev/ttyUSB0; auto: the one board plugged in."


@click.command("ports")
@click.option("--all", "show_all", is_flag=True, help="Also ports that do not look like boards.")
def ports_cmd(show_all: bool) -> None:
    """List the serial ports that look like MicroPython boards (USB vendor of their chip)."""
    from gateway.provision import ports

    found = [p for p in ports.ports() if show_all or p.board_like]
    if not found:
        click.echo(
            "No serial port looks like a board: plug the node in with a data cable (some "
            "USB cables only charge); --all lists every serial port."
        )
        return
    for p in found:
        usb = f"  USB {p.usb_id} {p.chip}" if p.usb_id else ""
        click.echo(f"{p.device}  {p.description}{usb}")


@click.command("flash")
@click.option("--port", required=True, help=PORT_HELP)
@click.option("--node-id", required=True, help="The node's id, e.g. lamp-042.")
@click.option(
    "--gateway",
    "gateway_addr",
    type=HostPort(default_port=DEFAULT_PORT),
    required=True,
    help=f"Where the node sends (port {DEFAULT_PORT} if none).",
)
@click.option("--wifi-ssid", help="Wi-Fi network the node joins.")
@click.option("--wifi-password", help="Its password (stored on the node, never printed).")
@click.option("--board", type=click.Choice(["esp32", "rp2"]), help="Refuse any other board.")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False),
    help="The gateway's TOML config: the node is registered there and its key taken from it.",
)
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Key file made at the gateway (output of `reverbere node add ID --json`, or 64 hex).",
)
@click.option("--gateway-name", help="Name of the gateway in messages (default: its address).")
@click.option("--baud", type=int, default=115200, show_default=True)
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the node's first pack after its reset.",
)
@click.option("--no-commission", is_flag=True, help="Flash and provision only; do not reset.")
@click.option(
    "--replace",
    is_flag=True,
    help="This board replaces a dead one with the same id: a new key, its counter restarted, "
    "its history kept (needs --config).",
)
@click.option("--show-key", is_flag=True, help="Print the node key (hex). Off by default.")
def flash_cmd(
    port,
    node_id,
    gateway_addr,
    wifi_ssid,
    wifi_password,
    board,
    config,
    key_file,
    gateway_name,
    baud,
    timeout,
    no_commission,
    replace,
    show_key,
) -> None:
    """Flash the firmware to a node over USB serial, provision it and commission it.

    Copies only the files that changed, verifies each by SHA-256 computed on the board,
    installs atomically (a pulled cable leaves the old firmware or the new one, never a mix),
    writes the node's config and key, then resets the node and waits for its first pack.
    """
    from gateway.provision.device import DeviceError, DeviceLost
    from gateway.provision.flash import FlashError, GatewayWatch, NodeConfig, flash

    bar = _Bar()
    port = _port(port)
    try:
        if config and key_file:
            raise FlashError("pass --config or --key-file, not both")
        host, gw_port = gateway_addr
        key = _key(node_id, key_file, config, replace)
        if replace:
            click.echo(f"{node_id}: new key made for the new board (counter restarted).")
        cfg = NodeConfig(node_id, host, gw_port, wifi_ssid, wifi_password, board)
        watch = GatewayWatch(config, node_id) if config and not no_commission else None
        click.echo(f"Flashing {node_id} on {port}")
        result = flash(
            port,
            cfg,
            key,
            baud=baud,
            progress=bar,
            gateway_name=gateway_name,
            commission_timeout=None if no_commission else timeout,
            watch=watch,
        )
    except DeviceLost as e:
        bar.close()
        raise click.ClickException(
            f"{e}. Plug the node back in and run the same command again: it still boots the "
            "firmware it had, and what was already copied is not sent again."
        ) from None
    except (FlashError, DeviceError) as e:
        bar.close()
        raise click.ClickException(str(e)) from None
    bar.close()
    info = result.board
    major, sub = info.bytecode
    click.echo(
        f"Board: {info.platform} ({info.machine}), MicroPython {info.version_text}, "
        f".mpy v{major}.{sub}"
    )
    if result.firmware_changed:
        unchanged = result.files_total - result.files_sent - result.files_copied
        click.echo(
            f"Firmware installed in slot {result.slot}: {result.files_sent} files sent "
            f"({result.bytes_sent} bytes), {result.files_copied} copied on the board, "
            f"{unchanged} already there; all {result.files_total} verified by SHA-256 on the "
            f"board."
        )
    else:
        click.echo(
            f"Firmware unchanged (slot {result.slot}, {result.files_total} files): nothing sent."
        )
    click.echo(
        f"Config and key written ({result.wire_bytes} bytes over the line in "
        f"{result.seconds:.1f} s)."
    )
    if show_key:
        click.echo(f"Key: {key.hex()}")
    if result.commission is not None:
        click.echo(result.commission.sentence)
        if not result.commission.ok:
            raise SystemExit(2)


@click.command("doctor")
@click.option("--port", required=True, help=PORT_HELP)
@click.option("--baud", type=int, default=115200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor_cmd(port, baud, as_json) -> None:
    """Read a node's state over USB serial: firmware, config (no key), buffer, errors.

    Exits 2 when it finds a problem (no firmware, no config or key, an error the node has
    not recovered from), so that a script or a checklist can rely on the status.
    """
    import json

    from gateway.provision.device import DeviceError
    from gateway.provision.flash import FlashError, doctor

    port = _port(port)
    try:
        d = doctor(port, baud)
    except (FlashError, DeviceError) as e:
        raise click.ClickException(f"{e} (check the cable and the --port)") from None
    info = d.board
    if as_json:
        out = {
            "board": info.platform,
            "machine": info.machine,
            "micropython": info.version_text,
            "slot": d.slot,
            "config": d.config,
            "has_key": d.has_key,
            "store": d.store,
            "status": d.status,
            "firmware": d.firmware,
            "update": d.update,
            "problems": d.problems(),
        }
        click.echo(json.dumps(out, sort_keys=True))
        if out["problems"]:
            raise SystemExit(2)
        return
    click.echo(f"Board: {info.platform} ({info.machine}), MicroPython {info.version_text}")
    click.echo(_firmware_line(d.slot, d.firmware))
    if d.update:
        click.echo(_update_line(d.update))
    if d.config:
        click.echo("Config:")
        for k, v in sorted(d.config.items()):
            click.echo(f"  {k:<10} {_readable(v)}")
    else:
        click.echo("Config: none (flash the node with `reverbere node flash`)")
    click.echo(f"Key: {'present (not shown)' if d.has_key else 'MISSING'}")
    st = d.store
    if st:
        click.echo(
            f"Buffer: {st['pending']}/{st['capacity']} readings waiting, dropped "
            f"{st['dropped']}, boot #{st['boot']}, message counter {st['counter']}"
        )
    else:
        click.echo("Buffer: none yet (the firmware makes it when it first runs)")
    click.echo(_status_line(d.status))
    problems = d.problems()
    for problem in problems:
        click.echo(f"Problem: {problem}")
    if problems:
        raise SystemExit(2)


def _update_line(u: dict) -> str:
    """The node's update over the air (/fw/ota.json, docs/ota.md) in one line."""
    text = f"Update: {u.get('state', '?')}, running version {u.get('running', '?')}"
    if u.get("state") == "downloading":
        text += f", version {u.get('version')}: {u.get('done')} of {u.get('files')} files"
    if u.get("trial"):
        slot, _, boots = u["trial"].partition(" ")
        text += f", slot {slot} on trial (boot {boots or '?'} of 3)"
    if u.get("result"):
        text += f"; last update: {u['result']}"
    if u.get("skip"):
        text += f" (version {u['skip']} is never tried again)"
    return text


def _firmware_line(slot: str | None, build: dict) -> str:
    if not slot:
        return "Firmware: not installed"
    if build.get("build"):
        return f"Firmware: version {build.get('version', '?')}, build {build['build']}, slot {slot}"
    return f"Firmware: slot {slot} (no build.json: flashed by an older tool; version unknown)"


def _readable(value) -> str:
    """A config value for a person: a dict as ``key value, ...``, lists comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_readable(v)}" for k, v in sorted(value.items())) or "(none)"
    if isinstance(value, list):
        return ", ".join(_readable(v) for v in value) or "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _status_line(s: dict) -> str:
    """The node's own status record (firmware/status.py), in one line."""
    if not s:
        return "Node status: none (the firmware writes it when it runs)"
    if "error" in s:
        return "Node status: status.json is unreadable"
    acks = s.get("acks") or 0
    sent = f"{acks} pack{'' if acks == 1 else 's'} acknowledged"
    if s.get("ack_s") is not None:
        sent += f", the last at {s['ack_s']} s"
    err = s.get("last_error")
    if err:
        err += f" (boot #{s.get('error_boot', '?')}, at {s.get('error_s', '?')} s)"
    return (
        f"Node status (its last record): boot #{s.get('boot', '?')}, up {s.get('uptime_s', '?')} "
        f"s, {sent}; last error: {err or 'none'}"
    )
