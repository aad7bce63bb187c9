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
from lineside_inspect.store.checks import SCHEMA_TABLE, SCHEMA_VERSION
from lineside_inspect.store.store import Store

from .conftest import ROOT, _initdb, fresh_database

MODEL = ROOT / "models" / "deeppcb" / "1"
runner = CliRunner()


@pytest.fixture
def pg(postgres: str) -> str:
    """A fresh database on the session's PostgreSQL server; its URL."""
    return fresh_database(postgres)


def sql(url: str, *statements: str) -> list[list[tuple[object, ...]]]:
    engine = create_engine(url)
    try:
        with engine.begin() as c:
            return [list(map(tuple, r)) if r.returns_rows else []
                    for r in (c.execute(text(s)) for s in statements)]
    finally:
        engine.dispose()


# a row a release before the mark stored
OLD_ROW = ("INSERT INTO inspections (id, created_at, recipe_name, recipe_version, model_name, "
           "model_version, model_sha256, class_names, verdict, reasons, defects, labels, "
           "max_score, timings_ms, width, height, image_bytes, review_state) VALUES ('old1', "
           "now(), 'r', '1', 'm', '1', 'x', '[]', 'pass', '[]', '[]', '', 0, '{}', 8, 8, 0, "
           "'unreviewed')")


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
    sql(pg, f"DROP TABLE {SCHEMA_TABLE}", OLD_ROW)
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


def test_a_lock_held_by_another_session_for_good_is_one_line_not_a_wait_for_ever(
        pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mark is made under an advisory lock: a session holding the same key (another
    program's, or a Lineside start stuck) held a first start for ever. It waits
    SCHEMA_LOCK_WAIT_S, then says so in one line, nothing made; once released it starts."""
    from lineside_inspect.store import store as store_module

    monkeypatch.setattr(store_module, "SCHEMA_LOCK_WAIT_S", 0.2)
    holder = create_engine(pg)
    try:
        with holder.connect() as c:
            c.execute(text("SELECT pg_advisory_lock(:k)"), {"k": store_module.SCHEMA_LOCK_KEY})
            with pytest.raises(ConfigError, match=r"another session held the lock Lineside "
                                                  r"marks stores under .* for 0\.2 s"):
                Store(tmp_path / "box", pg, box_id="box")
            c.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": store_module.SCHEMA_LOCK_KEY})
            c.commit()
            assert sql(pg, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0] == [
                (0,)]
        Store(tmp_path / "box", pg, box_id="box").close()
        assert marks(pg) == [(1, SCHEMA_VERSION)]
    finally:
        holder.dispose()


def test_a_mark_of_another_shape_is_refused_in_one_line_and_left_as_it_is(
        pg: str, tmp_path: Path) -> None:
    """A lineside_schema table Lineside did not make: several rows (the largest was
    taken), none (taken as a store from before the mark, never marked), text or a
    fraction in generation (cut to a whole number) were each read as a mark (session 43,
    adversarial pass)."""
    shapes = {
        "more than one row": "(id INTEGER, generation INTEGER); INSERT INTO lineside_schema "
                             "VALUES (1, 1), (2, 7)",
        "no row": "(id INTEGER, generation INTEGER)",
        "generation '1'": "(id INTEGER, generation TEXT); INSERT INTO lineside_schema "
                          "VALUES (1, '1')",
        "generation '1.5'": "(id INTEGER, generation REAL); INSERT INTO lineside_schema "
                            "VALUES (1, 1.5)",
        "id '2'": "(id INTEGER, generation INTEGER); INSERT INTO lineside_schema VALUES (2, 1)",
    }
    where = pg.replace("postgres@", "")
    for said, shape in shapes.items():
        table, *rows = shape.split("; ")
        sql(pg, f"DROP TABLE IF EXISTS {SCHEMA_TABLE}", f"CREATE TABLE {SCHEMA_TABLE} {table}",
            *rows)
        before = dump(pg)
        with pytest.raises(ConfigError) as exc:
            Store(tmp_path / "s", pg)
        assert exc.value.message.startswith(
            f"the store's database {where}: its table public.{SCHEMA_TABLE} does not read as "
            "Lineside's schema mark ("), (said, exc.value.message)
        assert said in exc.value.message, exc.value.message
        args, whose = next(commands(pg, tmp_path))  # serve, as `make serve`
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        one_line(res.output, f"error: {whose} {where}: its table public.{SCHEMA_TABLE} does "
                 "not read")
        assert dump(pg) == before, said


def _role(pg: str) -> tuple[str, str]:
    """A login role that may use schema public and read and write the rows of its tables,
    not make tables in it (no CREATE: PostgreSQL 15's default for a user not the owner);
    its URL and password."""
    role, secret = f"app_{uuid.uuid4().hex[:8]}", f"pw{uuid.uuid4().hex[:12]}"
    sql(pg, f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC", f"GRANT USAGE ON SCHEMA public TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON "
        f"TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {role}")
    return pg.replace("postgres@", f"{role}:{secret}@"), secret


def test_a_user_who_may_not_make_tables_opens_a_made_store_and_is_told_of_a_new_one(
        pg: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A store's user with USAGE on the schema and its tables' rows, no CREATE (tables
    made by their owner): a store from before the mark opened so, then stopped at the
    mark's CREATE TABLE with a traceback; on an empty database CREATE TABLE's traceback
    (session 43, adversarial pass)."""
    app_url, secret = _role(pg)
    where = pg.replace("postgres@", "")
    # an empty database: one line naming the user, the schema and the grant; nothing made
    before = dump(pg)
    for args, whose in list(commands(app_url, tmp_path))[:2]:  # serve, hub
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        one_line(res.output, f"error: {whose} {where} holds no Lineside store yet, and its "
                 f"user {app_url.split('//')[1].split(':')[0]} may not make tables in schema "
                 "public (no CREATE privilege on it): GRANT CREATE ON SCHEMA public TO")
        assert secret not in res.output
    with pytest.raises(ConfigError, match="may not make tables in schema public"):
        Store(tmp_path / "new", app_url)
    assert dump(pg) == before
    # a store from before the mark its owner made: opened unmarked, as before, and said
    Store(tmp_path / "owner", pg).close()
    sql(pg, f"DROP TABLE {SCHEMA_TABLE}", OLD_ROW)
    before = dump(pg)
    caplog.set_level(logging.WARNING, "lineside.store")
    with Store(tmp_path / "app", app_url) as st:
        assert st.get("old1") is not None
    assert dump(pg) == before
    assert any("from before its schema mark" in r.getMessage() and "unmarked" in r.getMessage()
               for r in caplog.records), caplog.text
    # marked by its owner: this user opens it reading the mark only
    Store(tmp_path / "owner", pg).close()
    assert marks(pg) == [(1, SCHEMA_VERSION)]
    before = dump(pg)
    Store(tmp_path / "app", app_url).close()
    assert dump(pg) == before
