"""Emulated install: CREATE/ALTER/DROP EXTENSION google_ml_integration without the files.

On a server where nobody can add extension files (RDS, Cloud SQL, Neon, ...), the proxy
answers the three statements itself by running the very same scripts from `sqlfuncs/`
in the client's session and transaction, wrapped in a DO block that also does what
PostgreSQL's extension machinery would: refuse a duplicate, honour IF [NOT] EXISTS,
refuse to drop what other objects depend on unless CASCADE, walk upgrade scripts.

Where the emulated extension's version lives: a comment on schema google_ml
("google_ml_integration 1.6 emulated by pg-model-proxy"), so the catalog views the proxy
shows clients (pg_extension, pg_available_extensions) can be derived with plain SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .extension import EXTENSION, extension_files

SCHEMA = "google_ml"
# Objects the scripts create outside schema google_ml (AlloyDB's legacy names).
LEGACY_FUNCTIONS = ("public.embedding(varchar, text)", "public.ml_predict_row(varchar, json)")
MARKER = "emulated by pg-model-proxy"
_MARKER_TEST = (
    f"SELECT FROM pg_catalog.pg_namespace WHERE nspname = '{SCHEMA}' "
    f"AND pg_catalog.obj_description(oid, 'pg_namespace') LIKE '{EXTENSION} % {MARKER}'"
)
_CONFIG_DUMP = re.compile(r"^\s*SELECT\s+pg_catalog\.pg_extension_config_dump\(.*?\);\s*$", re.I | re.M | re.S)


class EmulationError(Exception):
    """The request cannot be emulated (unknown version, no upgrade path)."""


@dataclass(frozen=True)
class ExtensionScripts:
    """The extension's control data and scripts, read from sqlfuncs/."""

    default_version: str
    comment: str
    installs: dict[str, str]  # version -> install script
    upgrades: dict[tuple[str, str], str]  # (from, to) -> upgrade script

    @classmethod
    def load(cls, files: list[Path] | None = None) -> ExtensionScripts:
        files = extension_files() if files is None else files
        control = next((f for f in files if f.suffix == ".control"), None)
        if control is None:
            raise EmulationError("sqlfuncs/ has no google_ml_integration.control")
        settings = dict(re.findall(r"^\s*(\w+)\s*=\s*'([^']*)'", control.read_text(), re.M))
        installs: dict[str, str] = {}
        upgrades: dict[tuple[str, str], str] = {}
        for f in files:
            match = re.fullmatch(rf"{EXTENSION}--([^-]+)(?:--([^-]+))?\.sql", f.name)
            if not match:
                continue
            body = _as_plain_sql(f.read_text())
            if match.group(2):
                upgrades[(match.group(1), match.group(2))] = body
            else:
                installs[match.group(1)] = body
        return cls(settings.get("default_version", ""), settings.get("comment", ""), installs, upgrades)

    def upgrade_path(self, start: str, target: str) -> list[str]:
        """Scripts to go from `start` to `target` (shortest chain), as PostgreSQL picks them."""
        frontier: list[tuple[str, list[str]]] = [(start, [])]
        seen = {start}
        while frontier:
            version, scripts = frontier.pop(0)
            if version == target:
                return scripts
            for (a, b), script in sorted(self.upgrades.items()):
                if a == version and b not in seen:
                    seen.add(b)
                    frontier.append((b, [*scripts, script]))
        raise EmulationError(
            f'extension "{EXTENSION}" has no update path from version "{start}" to version "{target}"'
        )

    def install_scripts(self, version: str) -> list[str]:
        """Scripts that install `version`: its own, or an older one plus upgrades."""
        if version in self.installs:
            return [self.installs[version]]
        for base in sorted(self.installs):
            try:
                return [self.installs[base], *self.upgrade_path(base, version)]
            except EmulationError:
                continue
        raise EmulationError(f'extension "{EXTENSION}" has no installation script nor update path for version "{version}"')


@cache
def scripts() -> ExtensionScripts:
    return ExtensionScripts.load()


def _as_plain_sql(text: str) -> str:
    """A script as CREATE EXTENSION would run it, minus what only works inside one."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("\\echo")]
    lines = [line for line in lines if line.strip() != "\\quit"]
    body = "\n".join(lines).replace("@extschema@", SCHEMA)
    return _CONFIG_DUMP.sub("", body)


def _creates_schema(script: str) -> bool:
    return re.search(rf"CREATE\s+SCHEMA\s+(IF\s+NOT\s+EXISTS\s+)?{SCHEMA}\b", script, re.I) is not None


def _quote(text: str, tag: str) -> str:
    if f"${tag}$" in text:
        raise EmulationError(f"script contains the reserved dollar-quote tag ${tag}$")
    # Newlines keep tags apart: "...$a$$b$" would contain "$$" and end a client's DO $$ body.
    return f"${tag}$\n{text}\n${tag}$"


def create_extension(*, version: str | None, if_not_exists: bool) -> str:
    """A DO block that behaves like CREATE EXTENSION [IF NOT EXISTS] ... [VERSION v]."""
    s = scripts()
    version = version or s.default_version
    body = "\n".join(
        f"  EXECUTE {_quote(script, 'pgmp_script')};" for script in s.install_scripts(version)
    )
    exists = (
        f"RAISE NOTICE 'extension \"{EXTENSION}\" already exists, skipping'; RETURN;"
        if if_not_exists
        else f"RAISE EXCEPTION 'extension \"{EXTENSION}\" already exists' USING ERRCODE = 'duplicate_object';"
    )
    return (
        "DO $pgmp$\nBEGIN\n"
        f"  IF EXISTS ({_MARKER_TEST}) THEN {exists} END IF;\n"
        + ("" if _creates_schema(s.install_scripts(version)[0]) else f"  CREATE SCHEMA IF NOT EXISTS {SCHEMA};\n")
        + f"{body}\n"
        f"  COMMENT ON SCHEMA {SCHEMA} IS '{EXTENSION} {version} {MARKER}';\n"
        "END $pgmp$"
    )


def alter_extension(*, version: str | None) -> str:
    """A DO block that behaves like ALTER EXTENSION ... UPDATE [TO v]."""
    s = scripts()
    target = version or s.default_version
    branches = []
    for start in sorted({a for a, _ in s.upgrades} | set(s.installs)):
        if start == target:
            continue
        try:
            chain = s.upgrade_path(start, target)
        except EmulationError:
            continue
        steps = "\n".join(f"    EXECUTE {_quote(x, 'pgmp_script')};" for x in chain)
        branches.append(f"  ELSIF current = '{start}' THEN\n{steps}")
    no_path = (
        f"RAISE EXCEPTION 'extension \"{EXTENSION}\" has no update path from version \"%\" to version \"{target}\"', "
        "current USING ERRCODE = 'invalid_parameter_value';"
    )
    return (
        "DO $pgmp$\nDECLARE current text;\nBEGIN\n"
        "  SELECT split_part(pg_catalog.obj_description(oid, 'pg_namespace'), ' ', 2) INTO current\n"
        f"    FROM pg_catalog.pg_namespace WHERE nspname = '{SCHEMA}'"
        f" AND pg_catalog.obj_description(oid, 'pg_namespace') LIKE '{EXTENSION} % {MARKER}';\n"
        f"  IF current IS NULL THEN RAISE EXCEPTION 'extension \"{EXTENSION}\" does not exist'"
        " USING ERRCODE = 'undefined_object';\n"
        f"  ELSIF current = '{target}' THEN\n"
        f"    RAISE NOTICE 'version \"{target}\" of extension \"{EXTENSION}\" is already installed'; RETURN;\n"
        + ("\n".join(branches) + "\n" if branches else "")
        + f"  ELSE {no_path}\n  END IF;\n"
        f"  COMMENT ON SCHEMA {SCHEMA} IS '{EXTENSION} {target} {MARKER}';\n"
        "END $pgmp$"
    )


def drop_extension(*, missing_ok: bool, cascade: bool) -> str:
    """A DO block that behaves like DROP EXTENSION [IF EXISTS] ... [CASCADE | RESTRICT]."""
    missing = (
        f"RAISE NOTICE 'extension \"{EXTENSION}\" does not exist, skipping'; RETURN;"
        if missing_ok
        else f"RAISE EXCEPTION 'extension \"{EXTENSION}\" does not exist' USING ERRCODE = 'undefined_object';"
    )
    # Objects outside the schema that depend on objects inside it: RESTRICT refuses them
    # (a dependent's address starts with its schema, or its table's for a column, default,
    # constraint or rule: those of google_ml's own tables and views are not dependents).
    dependents = (
        "SELECT FROM pg_catalog.pg_depend d WHERE d.deptype = 'n' AND ("
        " (d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid IN"
        "   (SELECT oid FROM pg_catalog.pg_class WHERE relnamespace = 'google_ml'::regnamespace))"
        " OR (d.refclassid = 'pg_catalog.pg_proc'::regclass AND d.refobjid IN"
        "   (SELECT oid FROM pg_catalog.pg_proc WHERE pronamespace = 'google_ml'::regnamespace))"
        " OR (d.refclassid = 'pg_catalog.pg_type'::regclass AND d.refobjid IN"
        "   (SELECT oid FROM pg_catalog.pg_type WHERE typnamespace = 'google_ml'::regnamespace)))"
        " AND (pg_catalog.pg_identify_object_as_address(d.classid, d.objid, d.objsubid)).object_names[1]"
        " IS DISTINCT FROM 'google_ml'"
    )
    restrict = (
        ""
        if cascade
        else (
            f"  IF EXISTS ({dependents}) THEN RAISE EXCEPTION"
            f" 'cannot drop extension {EXTENSION} because other objects depend on it'"
            " USING ERRCODE = 'dependent_objects_still_exist',"
            " HINT = 'Use DROP ... CASCADE to drop the dependent objects too.'; END IF;\n"
        )
    )
    # The extension's own objects outside its schema go first (RESTRICT still refuses if a
    # user object, e.g. a generated column, uses them).
    behaviour = "CASCADE" if cascade else "RESTRICT"
    legacy = "".join(
        f"  DROP FUNCTION IF EXISTS {signature} {behaviour};\n" for signature in LEGACY_FUNCTIONS
    )
    return (
        "DO $pgmp$\nBEGIN\n"
        f"  IF NOT EXISTS ({_MARKER_TEST}) THEN {missing} END IF;\n"
        f"{legacy}"
        f"{restrict}"
        f"  DROP SCHEMA {SCHEMA} CASCADE;\n"
        "END $pgmp$"
    )


def pg_extension_subquery() -> str:
    """pg_extension plus the emulated extension's row (same columns since PostgreSQL 9.1)."""
    return (
        "SELECT * FROM pg_catalog.pg_extension UNION ALL "
        f"SELECT n.oid, '{EXTENSION}'::name, n.nspowner, n.oid, false, "
        "split_part(pg_catalog.obj_description(n.oid, 'pg_namespace'), ' ', 2), NULL::oid[], NULL::text[] "
        f"FROM pg_catalog.pg_namespace n WHERE n.nspname = '{SCHEMA}' "
        f"AND pg_catalog.obj_description(n.oid, 'pg_namespace') LIKE '{EXTENSION} % {MARKER}'"
    )


def pg_available_extensions_subquery() -> str:
    s = scripts()
    comment = s.comment.replace("'", "''")
    return (
        f"SELECT * FROM pg_catalog.pg_available_extensions WHERE name <> '{EXTENSION}' UNION ALL "
        f"SELECT '{EXTENSION}'::name, '{s.default_version}'::text, "
        f"(SELECT split_part(pg_catalog.obj_description(n.oid, 'pg_namespace'), ' ', 2) "
        f"FROM pg_catalog.pg_namespace n WHERE n.nspname = '{SCHEMA}' "
        f"AND pg_catalog.obj_description(n.oid, 'pg_namespace') LIKE '{EXTENSION} % {MARKER}'), "
        f"'{comment}'::text"
    )
