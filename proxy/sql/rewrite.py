"""Statements the proxy answers differently from the server, and their replacements.

Only a few statements ever change, all about google_ml_integration: the three extension
statements in emulated mode (run as DO blocks from sqlfuncs/), SHOW of its settings, and
catalog queries of pg_settings / pg_extension / pg_available_extensions (which must list
what PostgreSQL cannot know about). Everything else is left byte for byte as the client
wrote it. A cheap byte test (`may_need_rewrite`) keeps pglast off the hot path.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import pglast
from pglast import ast, enums
from pglast.stream import RawStream
from pglast.visitors import Visitor

from .. import emulation
from ..extension import EXTENSION
from . import settings

log = logging.getLogger(__name__)

_MARKERS = (b"google_ml_integration", b"pg_settings", b"pg_extension", b"pg_available_extension")
_CREATE_IN_DO = re.compile(
    rf"CREATE\s+EXTENSION\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?{EXTENSION}\"?[^;$]*;?", re.I
)


def may_need_rewrite(query: bytes) -> bool:
    """Cheap pre-test on a Query/Parse body; False for nearly all traffic."""
    lowered = query.lower()
    return any(marker in lowered for marker in _MARKERS)


@dataclass
class Rewrite:
    """The SQL to send instead, and per statement the command tag to restore (None: keep)."""

    sql: str
    tags: list[str | None] = field(default_factory=list)


class Rewriter:
    """Rewrites statement text for one server: `emulated` says whether the extension is emulated."""

    def __init__(self, *, emulated: bool, server_major: int = 0) -> None:
        self.emulated = emulated
        self.server_major = server_major  # 0 when unknown

    def rewrite(self, sql: str) -> Rewrite | None:
        try:
            statements = pglast.parse_sql(sql)
        except pglast.parser.ParseError:
            return None  # the server will report the syntax error in its own words
        pieces: list[tuple[int, int, str]] = []
        tags: list[str | None] = []
        for raw in statements:
            if raw.stmt is None:
                continue
            start = raw.stmt_location or 0
            end = start + raw.stmt_len if raw.stmt_len else len(sql)
            tag: list[str | None] = [None]
            replaced = self._statement(raw.stmt, sql[start:end], tag)
            tags.append(tag[0])
            if replaced is not None:
                pieces.append((start, end, replaced))
        if not pieces:
            return None
        out = sql
        for start, end, text in reversed(pieces):
            out = out[:start] + text + out[end:]
        return Rewrite(out, tags if any(tags) else [])

    def _statement(self, node: ast.Node, text: str, tag: list[str | None]) -> str | None:
        if isinstance(node, ast.VariableShowStmt) and node.name and node.name.lower() in settings.SETTINGS:
            tag[0] = "SHOW"
            return settings.show_sql(node.name.lower())
        if (
            isinstance(node, ast.AlterSystemStmt)
            and node.setstmt is not None
            and 0 < self.server_major < 17
            and (node.setstmt.name or "").lower() in settings.SETTINGS
        ):
            # Before PostgreSQL 17, ALTER SYSTEM refuses placeholder settings; the closest
            # cluster-wide equivalent (superuser only, new sessions) is ALTER ROLE ALL.
            tag[0] = "ALTER SYSTEM"
            return "ALTER ROLE ALL " + RawStream()(node.setstmt)
        if self.emulated:
            replaced = self._extension_statement(node, text, tag)
            if replaced is not None:
                return replaced
        return self._catalog_query(node)

    def _extension_statement(self, node: ast.Node, text: str, tag: list[str | None]) -> str | None:
        if isinstance(node, ast.CreateExtensionStmt) and node.extname == EXTENSION:
            tag[0] = "CREATE EXTENSION"
            return emulation.create_extension(
                version=_option(node.options, "new_version"), if_not_exists=bool(node.if_not_exists)
            )
        if isinstance(node, ast.AlterExtensionStmt) and node.extname == EXTENSION:
            tag[0] = "ALTER EXTENSION"
            return emulation.alter_extension(version=_option(node.options, "new_version"))
        if (
            isinstance(node, ast.DropStmt)
            and node.removeType == enums.ObjectType.OBJECT_EXTENSION
            and [getattr(o, "sval", None) for o in node.objects or ()] == [EXTENSION]
        ):
            tag[0] = "DROP EXTENSION"
            return emulation.drop_extension(
                missing_ok=bool(node.missing_ok),
                cascade=node.behavior == enums.DropBehavior.DROP_CASCADE,
            )
        if isinstance(node, ast.DoStmt) and _CREATE_IN_DO.search(text):
            return _CREATE_IN_DO.sub(_create_inside_do, text)
        return None

    def _catalog_query(self, node: ast.Node) -> str | None:
        replacements = {"pg_settings": settings.pg_settings_subquery()}
        if self.emulated:
            replacements["pg_extension"] = emulation.pg_extension_subquery()
            replacements["pg_available_extensions"] = emulation.pg_available_extensions_subquery()
        swapper = _CatalogSwap(replacements)
        swapper(node)
        if not swapper.changed:
            return None
        return RawStream()(node)


def _create_inside_do(match: re.Match[str]) -> str:
    """CREATE EXTENSION inside a DO body becomes EXECUTE of the emulating DO block."""
    statement = match.group(0).rstrip(";")
    node = pglast.parse_sql(statement)[0].stmt
    assert isinstance(node, ast.CreateExtensionStmt)
    block = emulation.create_extension(
        version=_option(node.options, "new_version"), if_not_exists=bool(node.if_not_exists)
    )
    return f"EXECUTE $pgmp_do$\n{block}\n$pgmp_do$;"


def _option(options: tuple[ast.DefElem, ...] | None, name: str) -> str | None:
    for option in options or ():
        if option.defname == name and option.arg is not None:
            return str(getattr(option.arg, "sval", option.arg))
    return None


class _CatalogSwap(Visitor):  # type: ignore[misc]
    """Replaces references to chosen catalog views by subqueries under the same name."""

    def __init__(self, replacements: dict[str, str]) -> None:
        super().__init__()
        self.replacements = replacements
        self.changed = False

    def visit_RangeVar(self, ancestors: object, node: ast.RangeVar) -> ast.Node | None:
        if node.relname not in self.replacements or node.schemaname not in (None, "pg_catalog"):
            return None
        subquery = pglast.parse_sql(self.replacements[node.relname])[0].stmt
        self.changed = True
        alias = node.alias or ast.Alias(aliasname=node.relname)
        return ast.RangeSubselect(lateral=False, subquery=subquery, alias=alias)
