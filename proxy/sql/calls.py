"""Where a statement calls the prediction functions, and what the proxy can know beforehand.

The "pre-warm, then forward" design (DESIGN.md §2) needs, before a statement is forwarded,
every prediction call's arguments:

- constant calls: arguments are literals, bind parameters or expressions of them (no
  column): the proxy evaluates them (`SELECT <args>` with the same parameters), calls the
  model and stores the answers; one round trip;
- row-dependent calls: an argument refers to a column (or anything the proxy cannot
  evaluate on its own): the collect run finds the actual arguments.

Calls hidden in views, triggers, generated columns or functions are not visible in the
statement text at all; the collect run (and the catalog of hiding relations) covers them.
Not wired into sessions yet: issue 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pglast
from pglast import ast
from pglast.stream import RawStream
from pglast.visitors import Visitor

# (schema or None, name) -> the function's kind, as the results store keys it
PREDICTION_FUNCTIONS = {
    ("google_ml", "embedding"): "embedding",
    (None, "embedding"): "embedding",
    ("public", "embedding"): "embedding",
    ("google_ml", "predict_row"): "predict_row",
    (None, "ml_predict_row"): "predict_row",
    ("public", "ml_predict_row"): "predict_row",
}
_PARAMETER_NAMES = {"embedding": ("model_id", "content"), "predict_row": ("model_id", "request_body")}
_MARKERS = (b"embedding", b"predict_row")


def may_call_models(query: bytes) -> bool:
    """Cheap pre-test on a Query/Parse body for a visible prediction call."""
    lowered = query.lower()
    return any(marker in lowered for marker in _MARKERS)


@dataclass(frozen=True)
class CallSite:
    """One call in the statement text.

    `arguments` are SQL expressions (model id, input) in the function's parameter order,
    ready for `SELECT <model>, <input>` with the statement's own parameters; `constant`
    says whether they can be evaluated without a row.
    """

    kind: str  # "embedding" or "predict_row"
    arguments: tuple[str, str]
    constant: bool
    # Both arguments as written when they are plain string literals: no need to evaluate them.
    values: tuple[str, str] | None = field(default=None, compare=False)


# Statements that evaluate their expressions when run. EXPLAIN is one too: the planner folds
# an IMMUTABLE call with constant arguments. Definitions (CREATE FUNCTION/VIEW/TABLE/TRIGGER,
# PREPARE) only store expressions: their calls run later, in other statements.
EXECUTING = (
    ast.SelectStmt,
    ast.InsertStmt,
    ast.UpdateStmt,
    ast.DeleteStmt,
    ast.MergeStmt,
    ast.ExplainStmt,
    ast.CreateTableAsStmt,
    ast.CopyStmt,
    ast.CallStmt,
    ast.DeclareCursorStmt,
)


def find_calls(sql: str) -> list[CallSite]:
    """Every visible prediction call that running `sql` evaluates (order not significant)."""
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return []
    finder = _CallFinder()
    for raw in statements:
        if isinstance(raw.stmt, EXECUTING):
            finder(raw.stmt)
    return finder.calls


class _CallFinder(Visitor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[CallSite] = []

    def visit_FuncCall(self, ancestors: object, node: ast.FuncCall) -> None:
        names = [getattr(n, "sval", "") for n in node.funcname or ()]
        key = (names[0], names[1]) if len(names) == 2 else (None, names[0]) if names else (None, "")
        kind = PREDICTION_FUNCTIONS.get(key)
        if kind is None:
            return
        arguments = _in_parameter_order(kind, node.args or ())
        if arguments is None:
            return  # wrong arity or unknown names: the server will report it
        strings = [_string_literal(a) for a in arguments]
        self.calls.append(
            CallSite(
                kind,
                tuple(RawStream()(a) for a in arguments),  # type: ignore[arg-type]
                all(_is_constant(a) for a in arguments),
                (strings[0], strings[1]) if strings[0] is not None and strings[1] is not None else None,
            )
        )


def _string_literal(node: ast.Node) -> str | None:
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
        return str(node.val.sval)
    return None


def _in_parameter_order(kind: str, args: tuple[ast.Node, ...]) -> list[ast.Node] | None:
    names = _PARAMETER_NAMES[kind]
    if len(args) != 2:
        return None
    slots: list[ast.Node | None] = [None, None]
    position = 0
    for arg in args:
        if isinstance(arg, ast.NamedArgExpr):
            if arg.name not in names:
                return None
            slots[names.index(arg.name)] = arg.arg
        else:
            slots[position] = arg
            position += 1
    if any(s is None for s in slots):
        return None
    return [s for s in slots if s is not None]


class _ColumnFinder(Visitor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.row_dependent = False

    def visit_ColumnRef(self, ancestors: object, node: ast.Node) -> None:
        self.row_dependent = True

    def visit_SubLink(self, ancestors: object, node: ast.Node) -> None:
        self.row_dependent = True  # a subquery: leave it to the collect run

    def visit_FuncCall(self, ancestors: object, node: ast.FuncCall) -> None:
        names = [getattr(n, "sval", "") for n in node.funcname or ()]
        if names and names[-1] in ("random", "nextval", "clock_timestamp", "now", "currval"):
            self.row_dependent = True  # volatile: evaluating it separately would differ


def _is_constant(node: ast.Node) -> bool:
    finder = _ColumnFinder()
    finder(node)
    return not finder.row_dependent


def sql_statements(sql: str) -> list[str]:
    """The statements of a Query (empty when it does not parse)."""
    try:
        return [str(s) for s in pglast.split(sql)]
    except pglast.parser.ParseError:
        return []


def collect_refusal(sql: str) -> str | None:
    """Why `sql` cannot run as a collect run (inside a savepoint or a transaction the proxy
    rolls back), or None when it can: every statement must be one that evaluates
    expressions, and none may need data from the client."""
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return "the statement does not parse"
    for raw in statements:
        stmt = raw.stmt
        if isinstance(stmt, ast.CopyStmt) and stmt.is_from and stmt.filename is None:
            return (
                "COPY FROM STDIN into a table whose columns or triggers call models is not supported; "
                "use INSERT (batched all the same)"
            )
        if not isinstance(stmt, (*EXECUTING, ast.DoStmt, ast.RefreshMatViewStmt, ast.VariableSetStmt)):
            return (
                "a model call whose arguments depend on rows cannot share a query string with "
                f"{type(stmt).__name__.removesuffix('Stmt').upper()} statements; send it on its own"
            )
    return None


def arguments_query(sql: str) -> tuple[str, list[str]] | None:
    """A read-only query yielding the row-dependent calls' arguments, where one is safe to derive.

    For `UPDATE t SET c = embedding('m', body) [FROM ...] WHERE cond` the calls in SET run once
    per updated row, so `SELECT ('m')::text, (body)::text FROM t [, ...] WHERE cond` gives
    exactly their arguments, with no writes and no placeholders. Returns (query, kinds), one
    kind per call (two columns each); None for any other shape (calls in WHERE, RETURNING,
    CTEs that write, ...), which takes the general collect run.
    """
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return None
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.UpdateStmt):
        return None
    update = statements[0].stmt
    if update.relation is None or update.withClause is not None:
        return None  # a CTE may write: the general collect run
    returning = getattr(update, "returningClause", None) or getattr(update, "returningList", None)
    for clause in (update.whereClause, returning, update.fromClause):
        if clause is not None and _contains_call(clause):
            return None
    finder = _CallFinder()
    for target in update.targetList or ():
        finder(target)
    # Constant calls are answered on their own; only the row-dependent ones matter here.
    sites = [s for s in finder.calls if not s.constant]
    if not sites:
        return None
    columns = argument_columns(sites)
    relation = RawStream()(update.relation)
    sources = [relation, *(RawStream()(f) for f in update.fromClause or ())]
    query = f"SELECT {columns} FROM {', '.join(sources)}"
    if update.whereClause is not None:
        query += f" WHERE {RawStream()(update.whereClause)}"
    return query, [s.kind for s in sites]


def argument_columns(sites: list[CallSite]) -> str:
    """A SELECT list of each call's (model id, input) as text: two columns per call."""
    return ", ".join(f"({m})::text, ({i})::text" for site in sites for m, i in [site.arguments])


def _contains_call(node: ast.Node | tuple[ast.Node, ...]) -> bool:
    finder = _CallFinder()
    for part in node if isinstance(node, tuple) else (node,):
        finder(part)
    return bool(finder.calls)
