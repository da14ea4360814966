"""The real `psql` through the proxy: scripts, meta-commands, \\copy, and a differential run."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import psycopg
import pytest

from proxy.embedded import bundled_bin_dir
from tests.support import MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER


def unique(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def psql_bin() -> str:
    """psql 18 from the wheel (the scripts use \\bind); any psql on PATH otherwise."""
    candidate = bundled_bin_dir() / "psql"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("psql")
    if found is None:
        pytest.skip("no psql binary")
    return found


@pytest.fixture
def run_psql(psql_bin, tmp_path):
    """Run psql on a script file against a DSN; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        HOME=str(tmp_path), LC_ALL="C.UTF-8", PGCLIENTENCODING="UTF8", PGCONNECT_TIMEOUT="30"
    )

    def run(
        dsn: str, script: str, *extra: str, password: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "script.sql"
        path.write_text(script)
        return subprocess.run(
            [psql_bin, "-X", "-v", "ON_ERROR_STOP=1", "-d", dsn, *extra, "-f", str(path)],
            check=False,
            capture_output=True,
            text=True,
            env={**env, "PGPASSWORD": password} if password is not None else env,
            timeout=90,
        )

    return run


@pytest.fixture
def table(database):
    name = unique()
    yield name
    with psycopg.connect(database.direct_dsn(), autocommit=True) as c:
        c.execute(f"drop table if exists {name}")


def test_multi_statement_script(proxy, run_psql, table, tmp_path):
    infile = tmp_path / "in.tsv"
    infile.write_text("".join(f"{i}\tfrom file {i}\n" for i in range(100, 1100)))
    outfile = tmp_path / "out.csv"
    script = f"""
create table {table} (id int primary key, name text);
insert into {table} values (1, 'one'), (2, 'two');
select count(*) as n, max(name) as top from {table} \\gset
\\echo count=:n top=:top
\\copy {table} from '{infile}'
select count(*) as after_copy from {table} \\gset
\\echo after_copy=:after_copy
\\copy (select id, name from {table} where id % 100 = 0 order by id) to '{outfile}' with (format csv, header)
\\set ON_ERROR_STOP off
insert into {table} values (1, 'duplicate');
select 1 / 0;
\\echo still-running-after-errors
\\set ON_ERROR_STOP on
begin;
update {table} set name = upper(name) where id <= 2;
select string_agg(name, ',' order by id) as names from {table} where id <= 2 \\gset
rollback;
\\echo in_tx=:names
select name from {table} where id = 2 \\gset
\\echo after_rollback=:name
select $1::int + $2::int as bound \\bind 40 2 \\g
"""
    result = run_psql(proxy.dsn(), script, "-q")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "count=2 top=two" in lines
    assert "after_copy=1002" in lines
    assert "still-running-after-errors" in lines
    assert "in_tx=ONE,TWO" in lines
    assert "after_rollback=two" in lines
    assert any(line.strip() == "42" for line in lines), result.stdout
    assert 'duplicate key value violates unique constraint "' in result.stderr
    assert "ERROR:  division by zero" in result.stderr
    expected = ["id,name"] + [f"{i},from file {i}" for i in range(100, 1100, 100)]
    assert outfile.read_text().splitlines() == expected

    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute(f"select count(*), sum(id) from {table}").fetchone() == (
            1002,
            3 + sum(range(100, 1100)),
        )


def test_on_error_stop_stops_the_script(proxy, run_psql, table):
    script = f"""
create table {table} (id int);
insert into {table} values (1);
select no_such_column from {table};
\\echo must-not-be-printed
insert into {table} values (2);
"""
    result = run_psql(proxy.dsn(), script)
    assert result.returncode == 3
    assert 'column "no_such_column" does not exist' in result.stderr
    assert "must-not-be-printed" not in result.stdout
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute(f"select array_agg(id) from {table}").fetchone() == ([1],)


def test_describe_table(proxy, database, run_psql, table):
    with psycopg.connect(database.direct_dsn(), autocommit=True) as c:
        c.execute(
            f"create table {table} (id bigint generated always as identity primary key, "
            f"label text not null default 'x', score numeric(10,2), created timestamptz)"
        )
        c.execute(f"create index {table}_label on {table} (label)")
        c.execute(f"comment on table {table} is 'described through the proxy'")
    result = run_psql(proxy.dsn(), f"\\d {table}\n\\dt+ {table}\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f'Table "public.{table}"' in out
    for fragment in (
        "bigint",
        "generated always as identity",
        "not null",
        "'x'::text",
        "numeric(10,2)",
        "timestamp with time zone",
        f'"{table}_pkey" PRIMARY KEY, btree (id)',
        f'"{table}_label" btree (label)',
        "described through the proxy",
    ):
        assert fragment in out, fragment

    direct = run_psql(database.direct_dsn(), f"\\d {table}\n\\dt+ {table}\n")
    assert direct.returncode == 0, direct.stderr
    assert out == direct.stdout


def test_same_script_direct_and_through_proxy(proxy, database, run_psql, tmp_path, has_pgvector):
    """Differential: one script, run against the server and through the proxy, same output."""
    table = unique()
    # pgvector values where the server has it, plain arrays elsewhere (same wire traffic shape).
    vec_type, vec_open, vec_close = ("vector(3)", "[", "]") if has_pgvector else ("real[]", "{", "}")
    nearest = (
        f"select id, v <-> '[0,0,0]' as dist from {table} where v is not null "
        "order by v <-> '[1,2,0.5]' limit 3;"
        if has_pgvector
        else f"select id, v from {table} where v is not null order by id limit 3;"
    )
    infile = tmp_path / "in.csv"
    infile.write_text(
        "id,label,amount\n" + "".join(f"{i},label {i} ü,{i * 1.5}\n" for i in range(500))
    )
    outfile = tmp_path / "out.txt"
    script = f"""
\\pset null '(null)'
\\set ON_ERROR_STOP on
drop table if exists {table};
create table {table} (id int primary key, label text, amount numeric, tags text[], doc jsonb, v {vec_type});
\\copy {table} (id, label, amount) from '{infile}' with (format csv, header)
update {table} set tags = array['a', 'b,' || id], doc = jsonb_build_object('id', id, 'even', id % 2 = 0),
    v = ('{vec_open}' || id || ',' || id * 2 || ',0.5{vec_close}')::{vec_type} where id < 20;
select count(*), sum(amount), min(label), max(label) from {table};
select * from {table} where id < 5 order by id;
\\x on
select id, tags, doc, v from {table} where id between 10 and 12 order by id;
\\x off
select id, label from {table} where id < 3 order by id \\g (format=csv)
\\pset format unaligned
select id, amount from {table} where id % 100 = 0 order by id;
\\pset format aligned
{nearest}
select $1::text as a, $2::int * 2 as b \\bind hello 21 \\g
select 'x' as col \\gdesc
\\if true
  \\echo branch-taken
\\else
  \\echo branch-not-taken
\\endif
do $$ begin raise notice 'notice from %', 'do block'; end $$;
\\set ON_ERROR_STOP off
select * from {table}_missing;
insert into {table} (id) values (1);
\\set ON_ERROR_STOP on
begin;
delete from {table};
rollback;
select count(*) as remaining from {table} \\gset
\\echo remaining=:remaining
copy (select id, label from {table} where id < 4 order by id) to stdout;
\\copy (select id, label, amount, tags, doc from {table} order by id) to '{outfile}'
select generate_series(1, 2000) as n, repeat('y', 50) as pad \\g (format=unaligned tuples_only=on)
\\d {table}
drop table {table};
"""
    try:
        through = run_psql(proxy.dsn(), script)
        through_file = outfile.read_bytes() if outfile.exists() else b""
        outfile.unlink(missing_ok=True)
        direct = run_psql(database.direct_dsn(), script)
        direct_file = outfile.read_bytes() if outfile.exists() else b""
    finally:
        with psycopg.connect(database.direct_dsn(), autocommit=True) as c:
            c.execute(f"drop table if exists {table}")

    assert direct.returncode == 0, direct.stderr
    assert through.returncode == 0, through.stderr
    assert "branch-taken" in direct.stdout and "remaining=500" in direct.stdout
    assert len(direct.stdout.splitlines()) > 2000
    assert through.stdout == direct.stdout
    assert through.stderr == direct.stderr  # errors and notices, word for word
    assert "NOTICE:  notice from do block" in direct.stderr
    assert through_file == direct_file
    assert len(direct_file.splitlines()) == 500


@pytest.mark.parametrize(
    ("user", "password"), [(MD5_USER, MD5_PASSWORD), (SCRAM_USER, SCRAM_PASSWORD)]
)
def test_password_login(proxy, run_psql, user, password):
    # No password in the URL: psql takes it from PGPASSWORD, as users usually do.
    ok = run_psql(
        proxy.dsn(user=user),
        "select current_user as who \\gset\n\\echo who=:who\n",
        password=password,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == [f"who={user}"]
    bad = run_psql(proxy.dsn(user=user), "select 1;\n", password="wrong")
    assert bad.returncode == 2
    assert f'FATAL:  password authentication failed for user "{user}"' in bad.stderr
