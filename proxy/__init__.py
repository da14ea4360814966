"""pg-model-proxy: a PostgreSQL wire-protocol proxy with AlloyDB-style model calls."""

__version__ = "0.1.0"
