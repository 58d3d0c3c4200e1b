"""``reverbere sim fleet`` and ``reverbere sim net`` from the command line."""

import json

from click.testing import CliRunner

from gateway.cli.main import cli
from gateway.config import load
from gateway.store.db import open_db
from tests.gateway_helpers import GatewayProcess


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_sim_fleet_registers_its_nodes_with_a_gateway_and_delivers(tmp_path):
    invoke("gateway", "init", tmp_path)
    config = tmp_path / "gateway.toml"
    gw = GatewayProcess(config)
    try:
        args = ["sim", "fleet", "--config", config, "--gateway", f"127.0.0.1:{gw.coap_port}"]
        args += ["--nodes", 5, "--duration", "2h", "--anomalies", 2]
        args += ["--truth", tmp_path / "truth.jsonl", "--json"]
        res = invoke(*args)
        assert res.exit_code == 0, res.output
        stats = json.loads(res.output.strip().splitlines()[-1])
        # Run it again: known nodes get new keys and fresh counters, so the gateway takes them.
        again = invoke(*args)
        assert json.loads(again.output.strip().splitlines()[-1])["acked"] > 0
    finally:
        gw.kill()
    assert stats["nodes"] == 5 and stats["pending"] == 0 and stats["acked"] > 0
    db = open_db(load(config).database)
    try:
        stored = db.execute("SELECT count(*) FROM readings WHERE channel != 'drop'").fetchone()[0]
    finally:
        db.close()
    assert stored >= stats["readings"]
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert len(truth) == 2 and {"node", "channel", "kind", "start", "end"} == set(truth[0])


def test_sim_fleet_writes_keys_then_reads_them_back(tmp_path):
    keys = tmp_path / "keys.json"
    args = ["sim", "fleet", "--gateway", "127.0.0.1:9", "--nodes", 3, "--duration", "10m"]
    args += ["--keys", keys, "--json"]
    first = invoke(*args)
    assert first.exit_code == 0 and len(json.loads(keys.read_text())) == 3
    assert keys.stat().st_mode & 0o077 == 0  # secrets
    keys.write_text("{not json")
    bad = CliRunner().invoke(cli, [str(a) for a in args])
    assert bad.exit_code != 0 and "hint:" in bad.output


def test_sim_net_rejects_a_bad_outage():
    res = CliRunner().invoke(cli, ["sim", "net", "--outage", "10"])
    assert res.exit_code != 0 and "START:END" in res.output
