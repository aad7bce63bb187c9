"""A PostgreSQL store's schema generation (session 43): SQLite's file has carried it in
its header since session 42 (``PRAGMA user_version``), PostgreSQL had no mark, so a
release pointed at a database a newer one upgraded, at another program's database, went
ahead and made (or altered) its tables there. The store now keeps its generation in a
one-row ``lineside_schema`` table, judged before anything is made.

A real PostgreSQL server (the session's ``postgres`` fixture), a fresh database per test;
the commands run as an operator runs them (the CLI's own entry point, the bundled model).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.errors import ConfigError
from lineside_inspect.store.store import SCHEMA_TABLE, SCHEMA_VERSION, Store

from .conftest import ROOT, _initdb

MODEL = ROOT / "models" / "deeppcb" / "1"
runner = CliRunner()


@pytest.fixture
def pg(postgres: str) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL server; its URL."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    yield f"{postgres}/{name}"


def sql(url: str, *statements: str) -> list[list[tuple[object, ...]]]:
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            return [list(map(tuple, r)) if r.returns_rows else []
                    for r in (c.execute(text(s)) for s in statements)]
    finally:
        engine.dispose()


def dump(url: str) -> str:
    """The whole database as pg_dump writes it (schema and rows): 'left as it is'."""
    pg_dump = _initdb().parent / "pg_dump"  # type: ignore[union-attr]  # (postgres ran it)
    out = subprocess.run([str(pg_dump), url.replace("postgresql+psycopg", "postgresql")],
                         capture_output=True, text=True, check=True)
    # (less pg_dump's \\restrict key, new at each run)
    return "\n".join(line for line in out.stdout.splitlines()
                     if not line.startswith(("\\restrict", "\\unrestrict")))


def marks(url: str) -> list[tuple[object, ...]]:
    return sql(url, f"SELECT id, generation FROM {SCHEMA_TABLE}")[0]


def one_line(output: str, starts: str) -> None:
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert errors == [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(starts), output


def commands(url: str, tmp_path: Path) -> Iterator[tuple[list[str], str]]:
    """Each command that opens a store by URL (its arguments), and whose database it says
    it judged: serve (a config file, as `make serve`), hub, data pull, golden --store."""
    serve = tmp_path / "serve.yaml"
    serve.write_text(f"models: [{MODEL}]\ndata_dir: {tmp_path / 'box'}\ndatabase_url: {url}\n")
    hub = tmp_path / "hub.yaml"
    hub.write_text(f"database_url: {url}\ndata_dir: {tmp_path / 'hub'}\n"
                   "objects: {endpoint: '127.0.0.1:9', access_key: a, secret_key: s}\n")
    with socket.socket() as taken:  # a server past the check stops at its bind
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        yield ["serve", "--config", str(serve), "--port", port], "the server's database"
        yield ["hub", "--config", str(hub), "--port", port], "the hub's database"
    yield ["data", "pull", str(tmp_path), str(tmp_path / "out"), "--database-url", url], \
        "--database-url"
    yield ["golden", "create", "g", "--data-dir", str(tmp_path / "d"), "--store",
           str(tmp_path), "--database-url", url], "--database-url"


def test_a_new_store_is_marked_and_one_from_before_the_mark_is_marked_and_kept(
        pg: str, tmp_path: Path) -> None:
    Store(tmp_path / "a", pg).close()
    assert marks(pg) == [(1, SCHEMA_VERSION)]
    # a store of a release before the mark: Lineside's tables and a row, no mark
    sql(pg, f"DROP TABLE {SCHEMA_TABLE}", "INSERT INTO inspections (id, created_at, "
        "recipe_name, recipe_version, model_name, model_version, model_sha256, class_names, "
        "verdict, reasons, defects, labels, max_score, timings_ms, width, height, "
        "image_bytes, review_state) VALUES ('old1', now(), 'r', '1', 'm', '1', 'x', '[]', "
        "'pass', '[]', '[]', '', 0, '{}', 8, 8, 0, 'unreviewed')")
    with Store(tmp_path / "b", pg) as st:
        assert st.get("old1") is not None
    assert marks(pg) == [(1, SCHEMA_VERSION)]
    # marked and judged once: the next start only reads it (the dump is the same after)
    before = dump(pg)
    Store(tmp_path / "b", pg).close()
    assert dump(pg) == before


def test_a_newer_releases_store_is_refused_by_every_command_and_left_as_it_is(
        pg: str, tmp_path: Path) -> None:
    Store(tmp_path / "made", pg).close()
    sql(pg, f"UPDATE {SCHEMA_TABLE} SET generation = {SCHEMA_VERSION + 1}",
        "ALTER TABLE inspections DROP COLUMN site")  # as that release might have
    before = dump(pg)
    said = (f"was written by a newer Lineside release (store schema {SCHEMA_VERSION + 1} in "
            f"public.{SCHEMA_TABLE}; this release reads up to {SCHEMA_VERSION})")
    where = pg.replace("postgres@", "")
    for args, whose in commands(pg, tmp_path):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        one_line(res.output, f"error: {whose} {where} {said}")
    with pytest.raises(ConfigError, match="newer Lineside release") as exc:
        Store(tmp_path / "other", pg)  # every other way in
    assert exc.value.message.startswith(f"the store's database {where} {said}")
    assert dump(pg) == before  # the column it dropped not added back, nothing made


def test_another_programs_database_is_refused_and_a_schema_of_its_own_is_taken(
        pg: str, tmp_path: Path) -> None:
    sql(pg, "CREATE TABLE recipes (id SERIAL PRIMARY KEY, name TEXT)",
        "INSERT INTO recipes (name) VALUES ('soup')")
    before = dump(pg)
    where = pg.replace("postgres@", "")
    said = "is another program's database (schema public holds its tables: recipes)"
    for args, whose in commands(pg, tmp_path):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        one_line(res.output, f"error: {whose} {where} {said}")
    with pytest.raises(ConfigError, match="another program's database"):
        Store(tmp_path / "other", pg)
    assert dump(pg) == before
    # given a schema of its own in that database (the URL's search_path), it starts there
    sql(pg, "CREATE SCHEMA lineside")
    own = f"{pg}?options=-csearch_path%3Dlineside"
    Store(tmp_path / "own", own).close()
    assert marks(own) == [(1, SCHEMA_VERSION)]
    tables = sql(pg, "SELECT table_schema, table_name FROM information_schema.tables "
                 "WHERE table_schema IN ('public', 'lineside')")[0]
    assert {t for s, t in tables if s == "public"} == {"recipes"}
    assert {"inspections", SCHEMA_TABLE} <= {t for s, t in tables if s == "lineside"}
    assert sql(pg, "SELECT name FROM public.recipes")[0] == [("soup",)]
    # a search_path naming no schema that exists: one line, not CREATE TABLE's traceback
    with pytest.raises(ConfigError, match="has no schema to make the store's tables in"):
        Store(tmp_path / "none", f"{pg}?options=-csearch_path%3Dnowhere")


def test_reading_commands_refuse_a_database_with_no_store(pg: str, tmp_path: Path) -> None:
    """`data pull` and `golden --store` made Lineside's tables in an empty database, then
    said nothing matched; a server takes it for a new store (marked)."""
    before = dump(pg)
    where = pg.replace("postgres@", "")
    for args, whose in list(commands(pg, tmp_path))[2:]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        one_line(res.output, f"error: {whose} {where} holds no Lineside store (no "
                 "inspections table in schema public)")
    assert dump(pg) == before


def test_stores_starting_together_on_a_new_database_all_start_and_mark_it_once(
        pg: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Boxes of a site and a hub on one database, started at once: they mark it one at a
    time (an advisory lock), none failing on another's CREATE TABLE of the mark."""
    caplog.set_level(logging.INFO, "lineside.store")
    start = threading.Barrier(4)
    failed: list[BaseException] = []

    def box(n: int) -> None:
        start.wait()
        try:
            Store(tmp_path / f"box{n}", pg, box_id=f"box{n}").close()
        except BaseException as exc:  # (each is reported below)
            failed.append(exc)

    threads = [threading.Thread(target=box, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == []
    assert marks(pg) == [(1, SCHEMA_VERSION)]
    said = [r.getMessage() for r in caplog.records]
    assert sum("marked" in m for m in said) == 1, said
    assert not [m for m in said if "marking the store's schema failed" in m]
