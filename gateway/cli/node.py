"""``reverbere node flash`` and ``node doctor``: a technician and a node on a USB cable.

Thin shell over :mod:`gateway.provision.flash`: one library call per command; the library's
exceptions become a message with what to check.
"""

from __future__ import annotations

import sys

import click

from gateway.cli.options import HostPort
from protocols.const import DEFAULT_PORT


class _Bar:
    """gateway.provision.flash.Progress drawn as a click progress bar (bytes, and files in the
    label)."""

    def __init__(self) -> None:
        self.bar = None
        self.files = 0
        self.total_files = 0

    def start(self, total_bytes: int, total_files: int) -> None:
        self.total_files = total_files
        if total_files:
            self.bar = click.progressbar(
                length=max(total_bytes, 1), label=self._label(), show_percent=True
            )
            self.bar.__enter__()

    def _label(self) -> str:
        return f"Writing firmware {self.files}/{self.total_files} files"

    def advance(self, nbytes: int) -> None:
        if self.bar:
            self.bar.update(nbytes)

    def file_done(self, path: str) -> None:
        self.files += 1
        if self.bar and sys.stdout.isatty():  # a changed label is a new line on a pipe
            self.bar.label = self._label()
            self.bar.update(0)

    def close(self) -> None:
        if self.bar:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _key(node_id: str, key_file: str | None, config: str | None) -> bytes:
    from gateway.provision.flash import FlashError, gateway_key, load_key

    if key_file:
        return load_key(key_file, node_id)
    if config:
        try:
            return gateway_key(config, node_id)
        except ImportError:
            raise FlashError(
                "this build has no gateway registry: make the key at the gateway "
                f"(reverbere node add {node_id} --json > {node_id}.json) and pass --key-file"
            ) from None
    raise FlashError(
        f"no key: pass --config GATEWAY_TOML (registers {node_id} in the gateway's database) "
        f"or --key-file FILE (made at the gateway: reverbere node add {node_id} --json)"
    )


@click.command("flash")
@click.option("--port", required=True, help="Serial port of the node, e.g. /dev/ttyUSB0.")
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
    try:
        if config and key_file:
            raise FlashError("pass --config or --key-file, not both")
        host, gw_port = gateway_addr
        key = _key(node_id, key_file, config)
        cfg = NodeConfig(node_id, host, gw_port, wifi_ssid, wifi_password, board)
        watch = GatewayWatch(config, node_id) if config and not no_commission else None
        click.echo(f"Flashing {node_id} on {port}...")
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
@click.option("--port", required=True, help="Serial port of the node, e.g. /dev/ttyUSB0.")
@click.option("--baud", type=int, default=115200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor_cmd(port, baud, as_json) -> None:
    """Read a node's state over USB serial: firmware, config (no key), buffer, errors."""
    import json

    from gateway.provision.device import DeviceError
    from gateway.provision.flash import FlashError, doctor

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
        }
        click.echo(json.dumps(out, sort_keys=True))
        return
    click.echo(f"Board: {info.platform} ({info.machine}), MicroPython {info.version_text}")
    click.echo(f"Firmware: {'slot ' + d.slot if d.slot else 'not installed'}")
    if d.config:
        click.echo("Config: " + " ".join(f"{k}={v}" for k, v in sorted(d.config.items())))
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
