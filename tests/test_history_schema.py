"""bot/history/schema.py is the one description of the schema: both backends migrate a fresh
database to the same tables, columns, keys and indexes, compared through their catalogs (SQLite's
pragmas, PostgreSQL's information_schema and pg_index). Each backend's migration from v1 and its
versioning: test_history_sqlite.py, test_history_pg.py."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg

from bot.history.postgres import PostgresStore
from bot.history.schema import POSTGRESQL, SCHEMA, SQLITE, migrations
from bot.history.sqlite import SQLiteStore
from bot.history.store import FILENAME, DatabaseSettings

# Column types that one placeholder of bot/history/schema.py (or one plain type) gives in SQLite
# and in PostgreSQL.
SAME_TYPE = {
    ("INTEGER", "bigint"),
    ("INTEGER", "boolean"),
    ("TEXT", "text"),
    ("REAL", "timestamp with time zone"),
}
PG_COLUMNS = """SELECT table_name AS table, column_name AS name, data_type AS type,
    is_nullable = 'NO' AS not_null FROM information_schema.columns
    WHERE table_schema = 'public' AND table_name <> 'schema_version' ORDER BY table_name, ordinal_position"""
PG_INDEXES = """SELECT t.relname AS table, i.relname AS name, x.indisprimary AS primary,
    x.indisunique AS unique, x.indpred IS NOT NULL AS partial,
    array(SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(num, ord)
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.num ORDER BY k.ord) AS columns
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
    WHERE t.relnamespace = 'public'::regnamespace AND t.relname <> 'schema_version'"""
Catalog = dict[str, dict[str, Any]]  # table: its columns (name, type, not null), primary key, indexes


def index_columns(db: sqlite3.Connection, index: str) -> tuple[str, ...]:
    return tuple(column for _, _, column in db.execute(f"PRAGMA index_info({index})"))


def sqlite_catalog(path: Path) -> Catalog:
    catalog: Catalog = {}
    with closing(sqlite3.connect(path)) as db:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
        for (table,) in tables.fetchall():
            # each column's position, name, type, not null, default, place in the primary key
            info = db.execute(f"PRAGMA table_info({table})").fetchall()
            catalog[table] = {
                "columns": [(name, type_, bool(not_null or pk)) for _, name, type_, not_null, _, pk in info],
                "primary": tuple(c[1] for c in sorted(info, key=lambda c: c[5]) if c[5]),
                "indexes": {
                    (name, bool(unique), bool(partial), index_columns(db, name))
                    for _, name, unique, origin, partial in db.execute(f"PRAGMA index_list({table})")
                    if origin != "pk"  # the primary key's
                },
            }
    return catalog


async def pg_catalog(url: str) -> Catalog:
    catalog: Catalog = {}
    conn = await asyncpg.connect(url)
    try:
        for c in await conn.fetch(PG_COLUMNS):
            table = catalog.setdefault(c["table"], {"columns": [], "primary": (), "indexes": set()})
            table["columns"].append((c["name"], c["type"], c["not_null"]))
        for i in await conn.fetch(PG_INDEXES):
            if i["primary"]:
                catalog[i["table"]]["primary"] = tuple(i["columns"])
            else:
                catalog[i["table"]]["indexes"].add(
                    (i["name"], i["unique"], i["partial"], tuple(i["columns"]))
                )
    finally:
        await conn.close()
    return catalog


def test_each_dialect_fills_every_placeholder():
    rendered = {dialect: migrations(dialect) for dialect in (SQLITE, POSTGRESQL)}
    assert all(len(sqls) == len(SCHEMA) for sqls in rendered.values())
    assert not any("{" in sql or "}" in sql for sqls in rendered.values() for sql in sqls)
    assert rendered[SQLITE] != rendered[POSTGRESQL]


def test_both_backends_migrate_to_the_same_schema(database_url, tmp_path):
    """bot/history/schema.py is the one description: a fresh SQLite file and a fresh PostgreSQL
    database end with the same tables, columns, keys and indexes, each in its dialect's types."""

    async def migrated() -> Catalog:
        store = PostgresStore(
            DatabaseSettings(database_url, connect_seconds=5, retry_seconds=2, lock_seconds=3)
        )
        await store.start()
        await store.close()
        return await pg_catalog(database_url)

    asyncio.run(SQLiteStore(tmp_path).close())
    lite, pg = sqlite_catalog(tmp_path / FILENAME), asyncio.run(migrated())
    tables = {"messages", "inbox", "replies", "reply_messages", "votes", "consent", "bot_settings"}
    assert lite.keys() == pg.keys() == tables
    for table in lite:
        columns = list(zip(lite[table].pop("columns"), pg[table].pop("columns"), strict=True))
        assert [(a[0], a[2]) for a, _ in columns] == [(b[0], b[2]) for _, b in columns]  # names, NOT NULL
        assert {(a[1], b[1]) for a, b in columns} <= SAME_TYPE
    assert lite == pg  # primary keys and indexes
