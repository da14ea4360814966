"""SQL analysis with pglast: which statements the proxy must answer or adjust, and how."""
