"""ModelConfig: one row of `google_ml.models`, as the engine sees it.

Field names are the table's column names, so a row fetched with `SELECT <COLUMNS> FROM
google_ml.models` converts with `ModelConfig.from_row(row)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

# The 13 columns of google_ml.models / model_info_view / list_model, in the table's order.
COLUMNS: tuple[str, ...] = (
    "model_id",
    "model_availability",
    "model_request_url",
    "model_provider",
    "model_type",
    "model_qualified_name",
    "model_auth_type",
    "model_auth_id",
    "header_gen_fn",
    "input_transform_fn",
    "output_transform_fn",
    "input_batch_transform_fn",
    "output_batch_transform_fn",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """A registered model endpoint (enum columns as their text values)."""

    model_id: str
    model_availability: str | None = "AVAILABLE"
    model_request_url: str
    model_provider: str = "custom"
    model_type: str = "generic"
    model_qualified_name: str | None = None
    model_auth_type: str | None = None
    model_auth_id: str | None = None
    header_gen_fn: str | None = None
    input_transform_fn: str | None = None
    output_transform_fn: str | None = None
    input_batch_transform_fn: str | None = None
    output_batch_transform_fn: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        """Build from a mapping of column names (an asyncpg Record, a dict); extra keys are ignored."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in row:
                value = row[f.name]
                values[f.name] = None if value is None else str(value)
        return cls(**values)
