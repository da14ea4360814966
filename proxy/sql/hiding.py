"""Relations and functions that hide prediction calls, and whether a statement touches one.

A call can hide where the client's statement does not show it (SPEC §4): a STORED generated
column, a column default, a CHECK constraint or an index expression (evaluated when a row is
written), a trigger (its function runs on writes), a view (evaluated when read), or a user
function (when called). The proxy learns them from the catalog (DESIGN.md §2):

- `pg_depend` records what generated columns, defaults, constraints, indexes, triggers,
  policies, views and SQL-standard function bodies use;
- plpgsql and other string bodies record nothing, so a function whose `prosrc` calls a
  hiding function (`name(`) or names a hiding relation hides calls too;
- the closure of both, from the four prediction functions, is one recursive query.

Each hiding object is a function (calling it may call a model), a "read" relation (a view:
reading it may), or a "write" relation (a table or materialized view: writing or refreshing
it may). The closure over-approximates (a name in a comment counts), which costs a collect
run that finds nothing, never a missed call.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import pglast
from pglast import ast
from pglast.visitors import Visitor

from .calls import EXECUTING

# Every hiding object as (kind, schema, name): kind f (function), r (read), w (write).
CATALOG_QUERY = r"""
WITH RECURSIVE hiding(oid, kind, schema, name) AS (
    SELECT p.oid, 'f'::text, n.nspname::text, p.proname::text
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE (n.nspname = 'google_ml' AND p.proname IN ('embedding', 'predict_row'))
       OR (n.nspname = 'public' AND p.proname IN ('embedding', 'ml_predict_row'))
  UNION
    SELECT x.oid, x.kind, x.schema, x.name
    FROM hiding h
    CROSS JOIN LATERAL (
        -- what records a dependency on h: from a function, any user of it; from a
        -- relation, the views over it (reading, or writing through them)
        SELECT c.oid,
               CASE WHEN h.kind = 'w' THEN 'w'
                    WHEN d.classid = 'pg_catalog.pg_policy'::regclass OR c.relkind = 'v' THEN 'r'
                    ELSE 'w' END AS kind,
               cn.nspname::text AS schema, c.relname::text AS name
        FROM pg_catalog.pg_depend d
        CROSS JOIN LATERAL (SELECT CASE d.classid
            WHEN 'pg_catalog.pg_rewrite'::regclass THEN
                (SELECT ev_class FROM pg_catalog.pg_rewrite WHERE oid = d.objid)
            WHEN 'pg_catalog.pg_attrdef'::regclass THEN
                (SELECT adrelid FROM pg_catalog.pg_attrdef WHERE oid = d.objid)
            WHEN 'pg_catalog.pg_constraint'::regclass THEN
                (SELECT conrelid FROM pg_catalog.pg_constraint WHERE oid = d.objid)
            WHEN 'pg_catalog.pg_trigger'::regclass THEN
                (SELECT tgrelid FROM pg_catalog.pg_trigger WHERE oid = d.objid)
            WHEN 'pg_catalog.pg_policy'::regclass THEN
                (SELECT polrelid FROM pg_catalog.pg_policy WHERE oid = d.objid)
            WHEN 'pg_catalog.pg_class'::regclass THEN
                coalesce((SELECT indrelid FROM pg_catalog.pg_index WHERE indexrelid = d.objid), d.objid)
            END AS relid) r
        JOIN pg_catalog.pg_class c ON c.oid = r.relid
        JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
        WHERE d.refobjid = h.oid
          AND d.refclassid = CASE WHEN h.kind = 'f' THEN 'pg_catalog.pg_proc'::regclass
                                  ELSE 'pg_catalog.pg_class'::regclass END
          AND (h.kind = 'f' OR d.classid = 'pg_catalog.pg_rewrite'::regclass)
          AND c.oid <> h.oid
      UNION ALL
        -- user functions whose body calls h or names it, or (SQL-standard bodies) depends on it
        SELECT p.oid, 'f', n.nspname::text, p.proname::text
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'google_ml')
          AND p.oid <> h.oid
          AND (p.prosrc ~* ('\m' || regexp_replace(h.name, '([^[:alnum:]_])', '\\\1', 'g')
                            || CASE WHEN h.kind = 'f' THEN '\s*\(' ELSE '\M' END)
               OR (h.kind = 'f' AND EXISTS (
                   SELECT FROM pg_catalog.pg_depend d
                   WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid
                     AND d.refobjid = h.oid)))
    ) x
)
SELECT DISTINCT kind, schema, name FROM hiding
"""

# The prediction functions themselves: visible calls, found by sql.calls.
_VISIBLE = {("google_ml", "embedding"), ("google_ml", "predict_row"), ("public", "embedding"), ("public", "ml_predict_row")}


@dataclass(frozen=True)
class HidingCatalog:
    """The hiding objects of one database, by (schema, name)."""

    functions: frozenset[tuple[str, str]] = frozenset()
    reads: frozenset[tuple[str, str]] = frozenset()
    writes: frozenset[tuple[str, str]] = frozenset()
    # Cheap byte test: any hiding name as a word, case-insensitive (None: nothing hides).
    marker: re.Pattern[bytes] | None = field(default=None, compare=False)

    @classmethod
    def from_rows(cls, rows: list[tuple[str | None, ...]]) -> HidingCatalog:
        kinds: dict[str, set[tuple[str, str]]] = {"f": set(), "r": set(), "w": set()}
        for kind, schema, name in rows:
            if kind in kinds and schema is not None and name is not None and (schema, name) not in _VISIBLE:
                kinds[kind].add((schema, name))
        names = sorted({name for group in kinds.values() for _, name in group}, key=len, reverse=True)
        marker = (
            re.compile(rb"(?i)(?<![\w$])(?:" + b"|".join(re.escape(n.encode()) for n in names) + rb")(?![\w$])")
            if names
            else None
        )
        return cls(frozenset(kinds["f"]), frozenset(kinds["r"]), frozenset(kinds["w"]), marker)

    def __bool__(self) -> bool:
        return self.marker is not None

    def may_hide(self, query: bytes) -> bool:
        """Cheap pre-test on a Query/Parse body: does it name a hiding object at all?"""
        return self.marker is not None and self.marker.search(query) is not None

    def hides_calls(self, sql: str) -> bool:
        """Whether running `sql` may call a model through a hiding object."""
        if self.marker is None:
            return False
        try:
            statements = pglast.parse_sql(sql)
        except pglast.parser.ParseError:
            return False
        finder = _Finder(self)
        for raw in statements:
            stmt = raw.stmt
            if isinstance(stmt, ast.DoStmt):
                # A DO block's body is a string: name matching is all that can be done.
                if self.may_hide(str(_do_body(stmt)).encode()):
                    return True
                continue
            if isinstance(stmt, ast.RefreshMatViewStmt):
                if _matches(self.writes, stmt.relation):
                    return True
                continue
            target = _write_target(stmt)
            if target is not None and _matches(self.writes, target):
                return True
            if isinstance(stmt, EXECUTING):
                finder(stmt)
                if finder.found:
                    return True
        return False



def _matches(group: frozenset[tuple[str, str]], relation: ast.RangeVar | None) -> bool:
    if relation is None or relation.relname is None:
        return False
    return _named(group, relation.schemaname, relation.relname)


def _named(group: frozenset[tuple[str, str]], schema: str | None, name: str) -> bool:
    """Is (schema, name) in the group? Unqualified names match any schema (search_path is
    the server's business: over-matching only costs a collect run)."""
    if schema is not None:
        return (schema, name) in group
    return any(n == name for _, n in group)


def _write_target(stmt: ast.Node | None) -> ast.RangeVar | None:
    if isinstance(stmt, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt | ast.MergeStmt):
        return stmt.relation
    if isinstance(stmt, ast.CopyStmt) and stmt.is_from:
        return stmt.relation
    if isinstance(stmt, ast.ExplainStmt) and _is_analyze(stmt):
        return _write_target(stmt.query)
    return None


def _is_analyze(stmt: ast.ExplainStmt) -> bool:
    return any(getattr(o, "defname", None) == "analyze" for o in stmt.options or ())


def _do_body(stmt: ast.DoStmt) -> str:
    for arg in stmt.args or ():
        if getattr(arg, "defname", None) == "as":
            return str(getattr(arg.arg, "sval", ""))
    return ""


class _Finder(Visitor):  # type: ignore[misc]
    """Finds a hiding function call, a hiding view read, or a hiding table written in a CTE."""

    def __init__(self, catalog: HidingCatalog) -> None:
        super().__init__()
        self.catalog = catalog
        self.found = False

    def visit_FuncCall(self, ancestors: object, node: ast.FuncCall) -> None:
        names = [getattr(n, "sval", "") for n in node.funcname or ()]
        if names and _named(self.catalog.functions, names[0] if len(names) == 2 else None, names[-1]):
            self.found = True

    def visit_RangeVar(self, ancestors: object, node: ast.RangeVar) -> None:
        if node.relname is not None and _named(self.catalog.reads, node.schemaname, node.relname):
            self.found = True

    def visit_InsertStmt(self, ancestors: object, node: ast.Node) -> None:
        self._written(node)

    def visit_UpdateStmt(self, ancestors: object, node: ast.Node) -> None:
        self._written(node)

    def visit_DeleteStmt(self, ancestors: object, node: ast.Node) -> None:
        self._written(node)

    def visit_MergeStmt(self, ancestors: object, node: ast.Node) -> None:
        self._written(node)

    def _written(self, node: ast.Node) -> None:
        # Data-modifying CTEs (WITH x AS (INSERT ...)) write too.
        if _matches(self.catalog.writes, _write_target(node)):
            self.found = True


class CatalogCache:
    """The hiding catalog of each database, until DDL or its age makes it worth reloading.

    DDL sent through the proxy invalidates it at once (and again when that transaction ends,
    as other sessions only then see it); `ttl` bounds how long DDL made elsewhere goes unseen.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[HidingCatalog, float]] = {}

    def get(self, database: str) -> HidingCatalog | None:
        """The catalog, or None when it must be (re)loaded."""
        entry = self._entries.get(database)
        if entry is None or time.monotonic() - entry[1] > self.ttl:
            return None
        return entry[0]

    def put(self, database: str, catalog: HidingCatalog) -> None:
        self._entries[database] = (catalog, time.monotonic())

    def invalidate(self, database: str) -> None:
        self._entries.pop(database, None)


_DDL = (b"create", b"alter", b"drop", b"do")
_DDL_WORD = re.compile(rb"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*([a-zA-Z]+)", re.S)


def may_change_catalog(query: bytes) -> bool:
    """Cheap test on a Query/Parse body: does it start with a DDL keyword (or a DO block)?"""
    found = _DDL_WORD.match(query, 0, 256)
    return found is not None and found.group(1).lower() in _DDL
