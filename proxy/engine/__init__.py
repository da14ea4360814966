"""The provider engine: every model call the proxy makes, whatever the provider.

`Engine.embed` and `Engine.predict` wrap one provider module (`proxy/providers/`) in what every
provider needs once: deduplication and batching (`batching`), bounded concurrency (`limits`),
retries with backoff and deadlines (`retry`), errors ready to become a PostgreSQL
ErrorResponse with secrets scrubbed out (`errors`). No database code lives here: the session
reads `google_ml.models` rows into `models.ModelConfig` and hands them in.
"""
