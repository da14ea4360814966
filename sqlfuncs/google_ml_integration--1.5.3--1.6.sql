\echo Use "ALTER EXTENSION google_ml_integration UPDATE TO '1.6'" to load this file. \quit

-- google_ml_integration 1.5.3 -> 1.6: two more Vertex AI embedding models with built-in
-- support, and google_ml.model_qualified_name_of.

INSERT INTO google_ml.builtin_models
    (model_provider, model_qualified_name, model_type, model_request_url,
     header_gen_fn, input_transform_fn, output_transform_fn)
VALUES
    ('google', 'text-embedding-005', 'text_embedding', 'publishers/google/models/text-embedding-005',
     NULL, 'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform'),
    ('google', 'gemini-embedding-001', 'text_embedding', 'publishers/google/models/gemini-embedding-001',
     NULL, 'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform');

CREATE FUNCTION google_ml.model_qualified_name_of(model_id varchar)
RETURNS varchar
LANGUAGE sql STABLE
AS $gml$
    SELECT r.model_qualified_name FROM google_ml._model_row($1) AS r
$gml$;
COMMENT ON FUNCTION google_ml.model_qualified_name_of(varchar) IS 'The model_qualified_name of a registered model; raises for an unknown id';
