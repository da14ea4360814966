"""google_ml_integration's settings, as placeholders stock PostgreSQL accepts with SET.

Without the extension's C library nothing defines these settings in the server: SET,
ALTER SYSTEM/DATABASE/ROLE ... SET work (any dotted name is a placeholder), but an unset
placeholder has no default, SHOW fails on it and pg_settings hides placeholders. The
proxy answers SHOW and pg_settings queries with these defaults filled in.
"""

from __future__ import annotations

PREFIX = "google_ml_integration."

# name -> (default, description)
SETTINGS: dict[str, tuple[str, str]] = {
    "google_ml_integration.enable_model_support": (
        "on",
        "Enables calling models registered with google_ml.create_model from SQL.",
    ),
    "google_ml_integration.enable_ai_query_engine": (
        "off",
        "Enables the AI query engine functions (ai.if, ai.rank, ai.generate).",
    ),
    "google_ml_integration.enable_preview_ai_functions": (
        "off",
        "Enables preview AI functions.",
    ),
}


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def current_value_sql(name: str) -> str:
    """The setting's value in this session, or its default when never set."""
    default = SETTINGS[name][0]
    return f"coalesce(nullif(pg_catalog.current_setting({_lit(name)}, true), ''), {_lit(default)})"


def show_sql(name: str) -> str:
    """SHOW <name> as a SELECT that returns the same single column."""
    quoted = '"' + name.replace('"', '""') + '"'
    return f"SELECT {current_value_sql(name)} AS {quoted}"


def pg_settings_subquery() -> str:
    """pg_settings plus one row per setting; pg_settings' own column list on any version."""
    rows = ", ".join(
        f"({_lit(name)}, {_lit(default)}, {_lit(desc)}, {current_value_sql(name)})"
        for name, (default, desc) in SETTINGS.items()
    )
    return (
        "SELECT * FROM pg_catalog.pg_settings UNION ALL "
        "SELECT (pg_catalog.jsonb_populate_record(NULL::pg_catalog.pg_settings, pg_catalog.jsonb_build_object("
        "'name', d.name, 'setting', d.value, 'vartype', 'bool', 'context', 'user', "
        "'category', 'Customized Options', 'short_desc', d.descr, 'boot_val', d.boot, "
        # Where a placeholder's value came from is not knowable from SQL: 'default' when it
        # is the default, else 'session' (it may really be a role, database or file setting).
        "'reset_val', d.value, 'source', CASE WHEN d.value = d.boot THEN 'default' ELSE 'session' END, "
        "'pending_restart', false))).* "
        f"FROM (VALUES {rows}) AS d(name, boot, descr, value)"
    )
