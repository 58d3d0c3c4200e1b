"""Helpers for the detect and summarise tests: a real gateway database file, and storing
readings the way the gateway's store does (node ids resolved to integer refs)."""

from gateway.store.db import open_db


def make_db(path):
    """The gateway's database with every migration applied, plus the store's raw tables while
    the store's own migration set is not there (the summaries read them for late readings)."""
    db = open_db(path)
    if "nodes" not in db.table_names():
        db.execute("CREATE TABLE nodes (ref INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE)")
    if "readings" not in db.table_names():
        db.execute(
            "CREATE TABLE readings (node INTEGER NOT NULL, channel TEXT NOT NULL,"
            " time REAL NOT NULL, value REAL NOT NULL, PRIMARY KEY (node, channel, time))"
            " WITHOUT ROWID"
        )
    return db


def store(db, readings):
    """Insert ``readings`` into the raw table, as the store would before the stages run."""
    cols = {c.name for c in db["nodes"].columns}
    for r in readings:
        if "added" in cols:
            db.execute("INSERT OR IGNORE INTO nodes (id, added) VALUES (?, 0)", [r.node])
        else:
            db.execute("INSERT OR IGNORE INTO nodes (id) VALUES (?)", [r.node])
        db.execute(
            "INSERT OR IGNORE INTO readings SELECT ref, ?, ?, ? FROM nodes WHERE id = ?",
            [r.channel, r.time, r.value, r.node],
        )
    db.conn.commit()
    return readings
