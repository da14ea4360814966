\echo Use "CREATE EXTENSION google_ml_integration" to load this file. \quit

-- google_ml_integration 1.5.3: model endpoint management (AlloyDB's SQL API) in plain SQL.
--
-- What lives in the database: the registry of model endpoints and secret references, the
-- procedures that manage them (with the validation AlloyDB users rely on), the built-in
-- transform and header functions, the list of models with built-in support, and the
-- prediction functions (google_ml.embedding, predict_row), which look up answers the proxy
-- stored for this session: the proxy makes every model call (see the last section).
--
-- Conventions of this file:
--   * Everything lives in schema google_ml, which the script creates (so DROP EXTENSION
--     drops it). Names are always schema-qualified; nothing depends on search_path except
--     the lookup of user transform/header functions, which follows the caller's search_path
--     like a function call would.
--   * Every function and procedure is SECURITY INVOKER: what a role may do is what its
--     privileges on the tables allow (GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN
--     SCHEMA google_ml TO role is how an admin delegates model management).
--   * Errors are raised with a SQLSTATE a client can test:
--       22004 null_value_not_allowed      a NULL id or secret path
--       22023 invalid_parameter_value     empty id, bad provider/type/auth type, bad URL,
--                                         transforms for a non-embedding model, auth mismatch
--       22001 string_data_right_truncation an id over 100 characters
--       23505 unique_violation            the model or secret already exists
--       42704 undefined_object            no such model (or secret), model_auth_id naming
--                                         no secret
--       42883 undefined_function          a transform/header function that does not exist
--       42804 datatype_mismatch           a transform/header function with the wrong signature
--       2BP01 dependent_objects_still_exist a secret still used by a model
--       PX001 (pg-model-proxy)           a prediction call with no stored result: the
--                                         statement did not go through pg-model-proxy
--       PX002 (pg-model-proxy)           notice of a prediction call seen in collect mode
--       55000 object_not_in_prerequisite_state  model support switched off
--   * Function bodies are quoted with $gml$, never with the empty tag (two dollar signs,
--     not even in a comment): in emulated mode the proxy may run this script from inside a
--     client's DO block quoted with the empty tag, which it would end.
--   * Helpers whose names start with an underscore are internal; their signatures may change
--     between versions.
--   * No settings (GUCs) are defined here: google_ml_integration.* placeholders are the
--     proxy's job.

CREATE SCHEMA google_ml;
COMMENT ON SCHEMA google_ml IS 'google_ml_integration: model endpoints, secrets and their management functions';
GRANT USAGE ON SCHEMA google_ml TO PUBLIC;

-------------------------------------------------------------------------------------------
-- Types
-------------------------------------------------------------------------------------------

-- AlloyDB's five providers, then the gateway providers of the external-models side.
CREATE TYPE google_ml.model_provider AS ENUM (
    'google',          -- Vertex AI
    'open_ai',
    'hugging_face',
    'anthropic',
    'custom',          -- any other endpoint (the default)
    'azure_openai',
    'cohere',
    'amazon_bedrock',
    'ai21labs',
    'databricks'
);
COMMENT ON TYPE google_ml.model_provider IS 'Who serves a model endpoint; decides how the proxy calls it (default custom)';

CREATE TYPE google_ml.model_type AS ENUM (
    'text_embedding',
    'generic',         -- the default: JSON in, JSON out (predict_row)
    'multimodal_embedding',
    'reranking',
    'ts_forecasting',
    'llm'
);
COMMENT ON TYPE google_ml.model_type IS 'What a model endpoint does: text_embedding (google_ml.embedding) or generic (google_ml.predict_row), ...';

CREATE TYPE google_ml.auth_type AS ENUM (
    'alloydb_service_agent_iam',  -- Google credentials of the proxy (Vertex AI)
    'secret_manager'              -- a secret registered with google_ml.create_sm_secret
);
COMMENT ON TYPE google_ml.auth_type IS 'How the proxy authenticates to a model endpoint; NULL means none, or headers from generate_headers_fn';

-------------------------------------------------------------------------------------------
-- Tables and view
-------------------------------------------------------------------------------------------

-- Secrets are references, never values: the proxy resolves secret_path when it calls a
-- model (Google Secret Manager for projects/P/secrets/S/versions/N, its own backends for
-- other schemes).
CREATE TABLE google_ml.sm_secrets (
    secret_id   varchar(100) PRIMARY KEY,
    secret_path varchar NOT NULL
);
COMMENT ON TABLE google_ml.sm_secrets IS 'Secrets models authenticate with: secret_id -> secret_path (where the proxy reads the value); the value itself is never stored';
COMMENT ON COLUMN google_ml.sm_secrets.secret_path IS 'e.g. projects/P/secrets/S/versions/N (Google Secret Manager)';

-- The registry. Columns and their order are AlloyDB's (list_model and model_info_view
-- return the same 13 columns). Rows are written by the procedures below, which validate
-- them; model_availability is informational.
CREATE TABLE google_ml.models (
    model_id                  varchar(100) PRIMARY KEY,
    model_availability        text DEFAULT 'AVAILABLE',
    model_request_url         varchar NOT NULL,
    model_provider            google_ml.model_provider NOT NULL DEFAULT 'custom',
    model_type                google_ml.model_type NOT NULL DEFAULT 'generic',
    model_qualified_name      varchar,
    model_auth_type           google_ml.auth_type,
    model_auth_id             varchar REFERENCES google_ml.sm_secrets (secret_id),
    header_gen_fn             varchar,
    input_transform_fn        varchar,
    output_transform_fn       varchar,
    input_batch_transform_fn  varchar,
    output_batch_transform_fn varchar
);
COMMENT ON TABLE google_ml.models IS 'Registered model endpoints (manage with google_ml.create_model/alter_model/drop_model)';
COMMENT ON COLUMN google_ml.models.model_request_url IS 'http(s) URL, or for provider google a Vertex AI resource path (publishers/..., projects/...) the proxy resolves against its Google project and region';
COMMENT ON COLUMN google_ml.models.model_auth_id IS 'secret_id in google_ml.sm_secrets when model_auth_type is secret_manager';

-- Models with built-in support: registering one of these needs only model_id,
-- model_provider and model_qualified_name; create_model fills in the type, the request URL
-- and the transform/header functions from here. Reference data of the extension (its rows
-- come from the install and upgrade scripts), readable by everyone.
CREATE TABLE google_ml.builtin_models (
    model_provider       google_ml.model_provider NOT NULL,
    model_qualified_name varchar NOT NULL,
    model_type           google_ml.model_type NOT NULL,
    model_request_url    varchar NOT NULL,
    header_gen_fn        varchar,
    input_transform_fn   varchar,
    output_transform_fn  varchar,
    PRIMARY KEY (model_provider, model_qualified_name)
);
COMMENT ON TABLE google_ml.builtin_models IS 'Models with built-in support: provider + qualified name -> model type, request URL, transform and header functions that create_model fills in';

CREATE VIEW google_ml.model_info_view WITH (security_invoker = true) AS
    SELECT m.model_id, m.model_availability, m.model_request_url, m.model_provider,
           m.model_type, m.model_qualified_name, m.model_auth_type, m.model_auth_id,
           m.header_gen_fn, m.input_transform_fn, m.output_transform_fn,
           m.input_batch_transform_fn, m.output_batch_transform_fn
    FROM google_ml.models AS m
    ORDER BY m.model_id;
COMMENT ON VIEW google_ml.model_info_view IS 'Every registered model endpoint, with the columns of google_ml.list_model';

-- Only roles an admin grants may see or change the registry (the view checks the caller's
-- rights on google_ml.models too: security_invoker).
REVOKE ALL ON google_ml.models FROM PUBLIC;
REVOKE ALL ON google_ml.sm_secrets FROM PUBLIC;
REVOKE ALL ON google_ml.model_info_view FROM PUBLIC;
REVOKE ALL ON google_ml.builtin_models FROM PUBLIC;
GRANT SELECT ON google_ml.builtin_models TO PUBLIC;

-- pg_dump keeps the rows users add; the pre-registered models come back with CREATE
-- EXTENSION, so the dump leaves them out.
SELECT pg_catalog.pg_extension_config_dump('google_ml.sm_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('google_ml.models', 'WHERE model_id NOT IN (''textembedding-gecko'', ''text-embedding-gecko@001'', ''gemini-1.5-pro:generateContent'', ''gemini-1.5-pro:streamGenerateContent'', ''gemini-1.0-pro:generateContent'')');

-------------------------------------------------------------------------------------------
-- Internal helpers (validation)
-------------------------------------------------------------------------------------------

-- An id (model_id, secret_id) as the procedures accept it: not NULL, not blank, at most
-- 100 characters (the column is varchar(100); a longer id is refused, not truncated).
CREATE FUNCTION google_ml._check_id(kind text, id varchar)
RETURNS varchar
LANGUAGE plpgsql IMMUTABLE
AS $gml$
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION '% cannot be NULL', kind USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF btrim(id) = '' THEN
        RAISE EXCEPTION '% cannot be empty', kind USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF char_length(id) > 100 THEN
        RAISE EXCEPTION '% is too long: % characters, at most 100', kind, char_length(id)
            USING ERRCODE = 'string_data_right_truncation';
    END IF;
    RETURN id;
END
$gml$;
COMMENT ON FUNCTION google_ml._check_id(text, varchar) IS 'Internal: raise unless id is a usable model or secret id';

-- A value of one of the enums, given as text: a clear message instead of the enum cast's
-- "invalid input value for enum". NULL passes through.
CREATE FUNCTION google_ml._check_enum(param text, given varchar, allowed text[])
RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $gml$
BEGIN
    IF given IS NULL OR given = ANY (allowed) THEN
        RETURN given;
    END IF;
    RAISE EXCEPTION 'Invalid %: %', param, given
        USING ERRCODE = 'invalid_parameter_value',
              HINT = format('Valid values: %s.', array_to_string(allowed, ', '));
END
$gml$;
COMMENT ON FUNCTION google_ml._check_enum(text, varchar, text[]) IS 'Internal: raise unless value is one of allowed (NULL passes)';

-- Whether a URL host is this machine: tests point provider URLs at local fake servers.
CREATE FUNCTION google_ml._is_loopback_host(host text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $gml$
    SELECT host = 'localhost' OR host LIKE '%.localhost' OR host = '[::1]'
        OR host ~ '^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$'
$gml$;
COMMENT ON FUNCTION google_ml._is_loopback_host(text) IS 'Internal: localhost, 127.0.0.0/8 or [::1]';

-- A request URL: http:// or https:// with a host; for provider google also a Vertex AI
-- resource path (publishers/..., projects/..., locations/...) that the proxy resolves
-- against its configured project and region.
--
-- Provider open_ai: the host must be api.openai.com. Other OpenAI-compatible servers are
-- registered with their own provider (custom, azure_openai, databricks), and the proxy's
-- configurable OpenAI base URL redirects api.openai.com calls (e.g. to a fake server in
-- tests) without the stored URL changing. A loopback host (localhost, 127.x, [::1]) is
-- accepted too, so a test can also register a local fake server directly.
CREATE FUNCTION google_ml._check_request_url(provider google_ml.model_provider, url varchar)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $gml$
DECLARE
    parts text[];
    host text;
BEGIN
    IF url IS NULL THEN
        RETURN;
    END IF;
    parts := regexp_match(url, '^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)$');
    IF parts IS NULL THEN
        IF provider = 'google' AND url ~ '^(publishers|projects|locations)/[^/\s]+/\S*$' THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'Invalid model_request_url: %', url
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A request URL must be an http:// or https:// URL'
                      || CASE WHEN provider = 'google'
                              THEN ' or a Vertex AI resource path such as publishers/google/models/MODEL.'
                              ELSE '.' END;
    END IF;
    IF lower(parts[1]) NOT IN ('http', 'https') THEN
        RAISE EXCEPTION 'Invalid model_request_url: %', url
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Scheme %s is not supported: a request URL must be an http:// or https:// URL.', parts[1]);
    END IF;
    host := lower(regexp_replace(parts[2], '^.*@', ''));          -- drop user:password@
    host := CASE WHEN host LIKE '[%' THEN substring(host FROM '^\[[^]]*\]')
                 ELSE regexp_replace(host, ':[0-9]*$', '') END;    -- drop :port
    IF host IS NULL OR host = '' OR url ~ '\s' THEN
        RAISE EXCEPTION 'Invalid model_request_url: %', url
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A request URL needs a host and no white space.';
    END IF;
    IF provider = 'open_ai' AND host <> 'api.openai.com' AND NOT google_ml._is_loopback_host(host) THEN
        RAISE EXCEPTION 'Invalid model_request_url: %', url
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('Provider open_ai calls api.openai.com, not %s.', host),
                  HINT = 'Register other OpenAI-compatible endpoints with model_provider custom, azure_openai or databricks.';
    END IF;
END
$gml$;
COMMENT ON FUNCTION google_ml._check_request_url(google_ml.model_provider, varchar) IS 'Internal: raise unless url is a request URL this provider accepts';

-- A transform or header function named by the user: it must exist (resolved like a call,
-- through the caller's search_path unless schema-qualified) and have the contract's
-- signature: first argument model_id varchar or text, second argument one of
-- second_args, returning result_type (not SETOF). Functions are stored by the name given.
CREATE FUNCTION google_ml._check_function(param text, fn varchar, second_args regtype[], result_type regtype, contract text)
RETURNS void
LANGUAGE plpgsql STABLE
AS $gml$
DECLARE
    parts text[];
    qualified text;
    first_arg regtype;
    second_arg regtype;
    candidate regprocedure;
    found text;
BEGIN
    IF fn IS NULL THEN
        RETURN;
    END IF;
    BEGIN
        parts := parse_ident(fn);
    EXCEPTION WHEN invalid_parameter_value THEN
        parts := NULL;
    END;
    IF parts IS NULL OR cardinality(parts) > 2 THEN
        RAISE EXCEPTION 'Invalid %: %', param, fn
            USING ERRCODE = 'undefined_function',
                  DETAIL = 'Not a function name (expected name or schema.name).';
    END IF;
    qualified := array_to_string(ARRAY(SELECT quote_ident(p) FROM unnest(parts) AS p), '.');

    FOREACH first_arg IN ARRAY ARRAY['character varying', 'text']::regtype[] LOOP
        FOREACH second_arg IN ARRAY second_args LOOP
            candidate := to_regprocedure(format('%s(%s, %s)', qualified, first_arg, second_arg));
            IF candidate IS NOT NULL AND EXISTS (
                SELECT FROM pg_catalog.pg_proc AS p
                WHERE p.oid = candidate AND p.prokind = 'f' AND NOT p.proretset
                  AND p.prorettype = result_type::oid)
            THEN
                RETURN;
            END IF;
        END LOOP;
    END LOOP;

    SELECT string_agg(format('%s RETURNS %s%s', p.oid::regprocedure,
                             CASE WHEN p.proretset THEN 'SETOF ' ELSE '' END,
                             CASE WHEN p.prokind = 'p' THEN '(procedure)' ELSE format_type(p.prorettype, NULL) END),
                      '; ' ORDER BY p.oid::regprocedure::text)
      INTO found
      FROM pg_catalog.pg_proc AS p
      JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
     WHERE p.proname = parts[cardinality(parts)]
       AND CASE WHEN cardinality(parts) = 2 THEN n.nspname = parts[1]
                ELSE n.nspname = ANY (current_schemas(true)) END;
    IF found IS NULL THEN
        RAISE EXCEPTION 'Invalid %: %', param, fn
            USING ERRCODE = 'undefined_function',
                  DETAIL = format('Function %s does not exist.', fn);
    END IF;
    RAISE EXCEPTION 'Invalid %: %', param, fn
        USING ERRCODE = 'datatype_mismatch',
              DETAIL = format('Expected %s%s; found %s.', fn, contract, found);
END
$gml$;
COMMENT ON FUNCTION google_ml._check_function(text, varchar, regtype[], regtype, text) IS 'Internal: raise unless fn names an existing function with the given contract';

-- Everything a model row must satisfy, whether it comes from create_model or alter_model.
CREATE FUNCTION google_ml._check_model(m google_ml.models)
RETURNS void
LANGUAGE plpgsql STABLE
AS $gml$
DECLARE
    given_transform text;
BEGIN
    PERFORM google_ml._check_id('model_id', m.model_id);

    IF m.model_request_url IS NULL THEN
        RAISE EXCEPTION 'model_request_url is required for model_id: %', m.model_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN m.model_qualified_name IS NULL
                                THEN 'No model_request_url and no model_qualified_name were given.'
                                ELSE format('Provider %s has no built-in %s model with qualified name %s.',
                                            m.model_provider, m.model_type, m.model_qualified_name) END,
                  HINT = 'Give model_request_url, or a model_provider and model_qualified_name listed in google_ml.builtin_models.';
    END IF;
    PERFORM google_ml._check_request_url(m.model_provider, m.model_request_url);

    -- Transform functions turn embedding input/output into the model's own JSON; the other
    -- types (generic first) send request_body as is.
    given_transform := CASE
        WHEN m.input_transform_fn IS NOT NULL THEN 'model_in_transform_fn'
        WHEN m.output_transform_fn IS NOT NULL THEN 'model_out_transform_fn'
        WHEN m.input_batch_transform_fn IS NOT NULL THEN 'model_batch_in_transform_fn'
        WHEN m.output_batch_transform_fn IS NOT NULL THEN 'model_batch_out_transform_fn'
    END;
    IF given_transform IS NOT NULL AND m.model_type <> 'text_embedding' THEN
        RAISE EXCEPTION 'Transform functions are not supported for % models: % given for model_id: %',
                        m.model_type, given_transform, m.model_id
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Only text_embedding models take transform functions; generic models receive request_body unchanged.';
    END IF;

    IF m.model_auth_type = 'secret_manager' AND m.model_auth_id IS NULL THEN
        RAISE EXCEPTION 'model_auth_id is required when model_auth_type is secret_manager (model_id: %)', m.model_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF m.model_auth_id IS NOT NULL AND m.model_auth_type IS DISTINCT FROM 'secret_manager' THEN
        RAISE EXCEPTION 'model_auth_id is only used with model_auth_type secret_manager, not % (model_id: %)',
                        m.model_auth_type, m.model_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF m.model_auth_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM google_ml.sm_secrets AS s WHERE s.secret_id = m.model_auth_id) THEN
        RAISE EXCEPTION 'Invalid model_auth_id: %', m.model_auth_id
            USING ERRCODE = 'undefined_object',
                  DETAIL = format('No secret has secret_id %s.', m.model_auth_id),
                  HINT = 'Register it first with CALL google_ml.create_sm_secret(secret_id => ..., secret_path => ...).';
    END IF;

    -- The contracts of SPEC section 4 (AlloyDB's signatures). A header function of an
    -- embedding model sees the input text, that of a generic model the request body.
    PERFORM google_ml._check_function('generate_headers_fn', m.header_gen_fn,
        CASE m.model_type WHEN 'text_embedding' THEN ARRAY['text']::regtype[]
                          WHEN 'generic' THEN ARRAY['json']::regtype[]
                          ELSE ARRAY['text', 'json']::regtype[] END,
        'json',
        CASE m.model_type WHEN 'text_embedding' THEN '(model_id varchar(100), input_text text) RETURNS json'
                          WHEN 'generic' THEN '(model_id text, input json) RETURNS json'
                          ELSE '(model_id text, input json) or (model_id varchar(100), input_text text) RETURNS json' END);
    PERFORM google_ml._check_function('model_in_transform_fn', m.input_transform_fn,
        ARRAY['text']::regtype[], 'json', '(model_id varchar(100), input_text text) RETURNS json');
    PERFORM google_ml._check_function('model_out_transform_fn', m.output_transform_fn,
        ARRAY['json']::regtype[], 'real[]', '(model_id varchar(100), response_json json) RETURNS real[]');
    PERFORM google_ml._check_function('model_batch_in_transform_fn', m.input_batch_transform_fn,
        ARRAY['text[]']::regtype[], 'json', '(model_id varchar(100), input_texts text[]) RETURNS json');
    PERFORM google_ml._check_function('model_batch_out_transform_fn', m.output_batch_transform_fn,
        ARRAY['json']::regtype[], 'real[]', '(model_id varchar(100), response_json json) RETURNS real[][]');
END
$gml$;
COMMENT ON FUNCTION google_ml._check_model(google_ml.models) IS 'Internal: raise unless a model row is valid (URL, transforms, auth, function signatures)';

-- The row of a model, or the error every procedure gives for an unknown id.
CREATE FUNCTION google_ml._model_row(model_id varchar)
RETURNS google_ml.models
LANGUAGE plpgsql STABLE
AS $gml$
DECLARE
    r google_ml.models;
BEGIN
    PERFORM google_ml._check_id('model_id', _model_row.model_id);
    SELECT m.* INTO r FROM google_ml.models AS m WHERE m.model_id = _model_row.model_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Model does not exist for model_id: %', _model_row.model_id
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN r;
END
$gml$;
COMMENT ON FUNCTION google_ml._model_row(varchar) IS 'Internal: the google_ml.models row of model_id; raises for an unknown id';

-------------------------------------------------------------------------------------------
-- Built-in transform and header functions
-------------------------------------------------------------------------------------------

CREATE FUNCTION google_ml.vertexai_text_embedding_input_transform(model_id varchar(100), input_text text)
RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $gml$
    SELECT json_build_object('instances', json_build_array(json_build_object('content', input_text)))
$gml$;
COMMENT ON FUNCTION google_ml.vertexai_text_embedding_input_transform(varchar, text) IS 'Vertex AI text embedding request: {"instances": [{"content": input_text}]}';

CREATE FUNCTION google_ml.vertexai_text_embedding_output_transform(model_id varchar(100), response_json json)
RETURNS real[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $gml$
DECLARE
    embedding json := response_json -> 'predictions' -> 0 -> 'embeddings' -> 'values';
BEGIN
    IF embedding IS NULL OR json_typeof(embedding) <> 'array' THEN
        RAISE EXCEPTION 'Unexpected response of model %: no predictions[0].embeddings.values', model_id
            USING ERRCODE = 'data_exception';
    END IF;
    RETURN ARRAY(SELECT v::real FROM json_array_elements_text(embedding) AS v);
END
$gml$;
COMMENT ON FUNCTION google_ml.vertexai_text_embedding_output_transform(varchar, json) IS 'Vertex AI text embedding response: predictions[0].embeddings.values as real[]';

CREATE FUNCTION google_ml.openai_text_embedding_input_transform(model_id varchar(100), input_text text)
RETURNS json
LANGUAGE plpgsql STABLE
AS $gml$
DECLARE
    qualified_name varchar := (google_ml._model_row(model_id)).model_qualified_name;
BEGIN
    IF qualified_name IS NULL THEN
        RAISE EXCEPTION 'model_qualified_name is required for OpenAI model_id: %', model_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN json_build_object('model', qualified_name, 'input', json_build_array(input_text));
END
$gml$;
COMMENT ON FUNCTION google_ml.openai_text_embedding_input_transform(varchar, text) IS 'OpenAI embeddings request: {"model": the model''s qualified name, "input": [input_text]}';

CREATE FUNCTION google_ml.openai_text_embedding_output_transform(model_id varchar(100), response_json json)
RETURNS real[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $gml$
DECLARE
    embedding json := response_json -> 'data' -> 0 -> 'embedding';
BEGIN
    IF embedding IS NULL OR json_typeof(embedding) <> 'array' THEN
        RAISE EXCEPTION 'Unexpected response of model %: no data[0].embedding', model_id
            USING ERRCODE = 'data_exception';
    END IF;
    RETURN ARRAY(SELECT v::real FROM json_array_elements_text(embedding) AS v);
END
$gml$;
COMMENT ON FUNCTION google_ml.openai_text_embedding_output_transform(varchar, json) IS 'OpenAI embeddings response: data[0].embedding as real[]';

-- The API key (x-api-key) is added by the proxy from the model's secret; it is never
-- stored in or returned by the database.
CREATE FUNCTION google_ml.anthropic_claude_header_gen_fn(model_id varchar(100), input json)
RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $gml$
    SELECT json_build_object('anthropic-version', '2023-06-01')
$gml$;
COMMENT ON FUNCTION google_ml.anthropic_claude_header_gen_fn(varchar, json) IS 'Anthropic Messages API headers: anthropic-version 2023-06-01 (the proxy adds x-api-key from the secret)';

-------------------------------------------------------------------------------------------
-- Request URLs
-------------------------------------------------------------------------------------------

-- The request URL of a model with built-in support (NULL when there is none):
--   * a model of google_ml.builtin_models: its URL;
--   * any other Vertex AI model (provider google): publishers/google/models/NAME.
-- Vertex AI URLs are relative: the proxy completes them with its configured project and
-- region. With model_region they read locations/REGION/publishers/google/models/NAME (the
-- proxy adds projects/PROJECT/ and takes the host from REGION). Other providers' URLs are
-- absolute, and model_region does not apply to them.
CREATE FUNCTION google_ml.generate_model_request_url(
    provider google_ml.model_provider,
    model_type google_ml.model_type,
    model_qualified_name varchar,
    model_region varchar DEFAULT NULL)
RETURNS varchar
LANGUAGE plpgsql STABLE
AS $gml$
DECLARE
    url varchar;
BEGIN
    IF model_region IS NOT NULL AND model_region !~ '^[a-z][a-z0-9-]*$' THEN
        RAISE EXCEPTION 'Invalid model_region: %', model_region
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A region looks like us-central1.';
    END IF;
    SELECT b.model_request_url INTO url
      FROM google_ml.builtin_models AS b
     WHERE b.model_provider = generate_model_request_url.provider
       AND b.model_qualified_name = generate_model_request_url.model_qualified_name
       AND (generate_model_request_url.model_type IS NULL
            OR b.model_type = generate_model_request_url.model_type);
    IF url IS NULL AND provider = 'google' AND btrim(model_qualified_name) <> '' THEN
        url := 'publishers/google/models/' || model_qualified_name;
    END IF;
    IF provider = 'google' AND model_region IS NOT NULL AND url LIKE 'publishers/%' THEN
        url := format('locations/%s/%s', model_region, url);
    END IF;
    RETURN url;
END
$gml$;
COMMENT ON FUNCTION google_ml.generate_model_request_url(google_ml.model_provider, google_ml.model_type, varchar, varchar) IS 'Request URL of a model with built-in support (relative for Vertex AI), NULL if none';

-------------------------------------------------------------------------------------------
-- Model management
-------------------------------------------------------------------------------------------

-- Register a model endpoint. Only model_id is required; an empty string counts as not
-- given. For a model with built-in support (google_ml.builtin_models) model_type, the URL
-- and the transform/header functions default to the built-in ones; other Vertex AI models
-- get publishers/google/models/QUALIFIED_NAME. model_type defaults to generic,
-- model_provider to custom, and model_auth_type to secret_manager when model_auth_id is
-- given.
CREATE PROCEDURE google_ml.create_model(
    model_id varchar,
    model_request_url varchar DEFAULT NULL,
    model_provider varchar DEFAULT 'custom',
    model_type varchar DEFAULT NULL,
    model_qualified_name varchar DEFAULT NULL,
    model_auth_type varchar DEFAULT NULL,
    model_auth_id varchar DEFAULT NULL,
    generate_headers_fn varchar DEFAULT NULL,
    model_in_transform_fn varchar DEFAULT NULL,
    model_out_transform_fn varchar DEFAULT NULL,
    model_batch_in_transform_fn varchar DEFAULT NULL,
    model_batch_out_transform_fn varchar DEFAULT NULL)
LANGUAGE plpgsql
AS $gml$
DECLARE
    m google_ml.models;
    b google_ml.builtin_models;
BEGIN
    m.model_id := google_ml._check_id('model_id', create_model.model_id);
    m.model_availability := 'AVAILABLE';
    m.model_provider := coalesce(google_ml._check_enum('model_provider', create_model.model_provider,
                                     enum_range(NULL::google_ml.model_provider)::text[]), 'custom')::google_ml.model_provider;
    m.model_type := google_ml._check_enum('model_type', create_model.model_type,
                        enum_range(NULL::google_ml.model_type)::text[])::google_ml.model_type;
    m.model_auth_type := google_ml._check_enum('model_auth_type', nullif(create_model.model_auth_type, ''),
                             enum_range(NULL::google_ml.auth_type)::text[])::google_ml.auth_type;
    m.model_request_url := nullif(create_model.model_request_url, '');
    m.model_qualified_name := nullif(create_model.model_qualified_name, '');
    m.model_auth_id := nullif(create_model.model_auth_id, '');
    m.header_gen_fn := nullif(create_model.generate_headers_fn, '');
    m.input_transform_fn := nullif(create_model.model_in_transform_fn, '');
    m.output_transform_fn := nullif(create_model.model_out_transform_fn, '');
    m.input_batch_transform_fn := nullif(create_model.model_batch_in_transform_fn, '');
    m.output_batch_transform_fn := nullif(create_model.model_batch_out_transform_fn, '');

    SELECT bm.* INTO b
      FROM google_ml.builtin_models AS bm
     WHERE bm.model_provider = m.model_provider
       AND bm.model_qualified_name = m.model_qualified_name
       AND (m.model_type IS NULL OR bm.model_type = m.model_type);
    IF FOUND THEN
        m.model_type := b.model_type;
        m.model_request_url := coalesce(m.model_request_url, b.model_request_url);
        m.header_gen_fn := coalesce(m.header_gen_fn, b.header_gen_fn);
        m.input_transform_fn := coalesce(m.input_transform_fn, b.input_transform_fn);
        m.output_transform_fn := coalesce(m.output_transform_fn, b.output_transform_fn);
    END IF;
    m.model_type := coalesce(m.model_type, 'generic');
    m.model_request_url := coalesce(m.model_request_url,
        google_ml.generate_model_request_url(m.model_provider, m.model_type, m.model_qualified_name));
    IF m.model_auth_id IS NOT NULL AND m.model_auth_type IS NULL THEN
        m.model_auth_type := 'secret_manager';
    END IF;

    PERFORM google_ml._check_model(m);

    INSERT INTO google_ml.models (
        model_id, model_availability, model_request_url, model_provider, model_type,
        model_qualified_name, model_auth_type, model_auth_id, header_gen_fn,
        input_transform_fn, output_transform_fn, input_batch_transform_fn, output_batch_transform_fn)
    VALUES (
        m.model_id, m.model_availability, m.model_request_url, m.model_provider, m.model_type,
        m.model_qualified_name, m.model_auth_type, m.model_auth_id, m.header_gen_fn,
        m.input_transform_fn, m.output_transform_fn, m.input_batch_transform_fn, m.output_batch_transform_fn)
    ON CONFLICT ON CONSTRAINT models_pkey DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Model already exists for model_id: %', m.model_id
            USING ERRCODE = 'unique_violation',
                  HINT = 'Change it with google_ml.alter_model, or drop it first with google_ml.drop_model.';
    END IF;
END
$gml$;
COMMENT ON PROCEDURE google_ml.create_model(varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar) IS 'Register a model endpoint (CALL google_ml.create_model(model_id => ..., ...))';

-- Change a registered model: a NULL argument (or one not given) leaves its field as it is;
-- an empty string clears an optional field (qualified name, auth, functions). The result
-- is validated like a new model. Built-in defaults are not re-applied.
CREATE PROCEDURE google_ml.alter_model(
    model_id varchar,
    model_request_url varchar DEFAULT NULL,
    model_provider varchar DEFAULT NULL,
    model_type varchar DEFAULT NULL,
    model_qualified_name varchar DEFAULT NULL,
    model_auth_type varchar DEFAULT NULL,
    model_auth_id varchar DEFAULT NULL,
    generate_headers_fn varchar DEFAULT NULL,
    model_in_transform_fn varchar DEFAULT NULL,
    model_out_transform_fn varchar DEFAULT NULL,
    model_batch_in_transform_fn varchar DEFAULT NULL,
    model_batch_out_transform_fn varchar DEFAULT NULL)
LANGUAGE plpgsql
AS $gml$
DECLARE
    m google_ml.models;
BEGIN
    PERFORM google_ml._check_id('model_id', alter_model.model_id);
    SELECT t.* INTO m FROM google_ml.models AS t WHERE t.model_id = alter_model.model_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Model does not exist for model_id: %', alter_model.model_id
            USING ERRCODE = 'undefined_object';
    END IF;

    IF alter_model.model_request_url IS NOT NULL THEN
        m.model_request_url := nullif(alter_model.model_request_url, '');
    END IF;
    IF alter_model.model_provider IS NOT NULL THEN
        m.model_provider := google_ml._check_enum('model_provider', alter_model.model_provider,
                                enum_range(NULL::google_ml.model_provider)::text[])::google_ml.model_provider;
    END IF;
    IF alter_model.model_type IS NOT NULL THEN
        m.model_type := google_ml._check_enum('model_type', alter_model.model_type,
                            enum_range(NULL::google_ml.model_type)::text[])::google_ml.model_type;
    END IF;
    IF alter_model.model_qualified_name IS NOT NULL THEN
        m.model_qualified_name := nullif(alter_model.model_qualified_name, '');
    END IF;
    IF alter_model.model_auth_type IS NOT NULL THEN
        m.model_auth_type := google_ml._check_enum('model_auth_type', nullif(alter_model.model_auth_type, ''),
                                 enum_range(NULL::google_ml.auth_type)::text[])::google_ml.auth_type;
    END IF;
    IF alter_model.model_auth_id IS NOT NULL THEN
        m.model_auth_id := nullif(alter_model.model_auth_id, '');
        IF m.model_auth_id IS NOT NULL AND m.model_auth_type IS NULL THEN
            m.model_auth_type := 'secret_manager';
        END IF;
    END IF;
    IF alter_model.generate_headers_fn IS NOT NULL THEN
        m.header_gen_fn := nullif(alter_model.generate_headers_fn, '');
    END IF;
    IF alter_model.model_in_transform_fn IS NOT NULL THEN
        m.input_transform_fn := nullif(alter_model.model_in_transform_fn, '');
    END IF;
    IF alter_model.model_out_transform_fn IS NOT NULL THEN
        m.output_transform_fn := nullif(alter_model.model_out_transform_fn, '');
    END IF;
    IF alter_model.model_batch_in_transform_fn IS NOT NULL THEN
        m.input_batch_transform_fn := nullif(alter_model.model_batch_in_transform_fn, '');
    END IF;
    IF alter_model.model_batch_out_transform_fn IS NOT NULL THEN
        m.output_batch_transform_fn := nullif(alter_model.model_batch_out_transform_fn, '');
    END IF;

    PERFORM google_ml._check_model(m);

    UPDATE google_ml.models AS t
       SET model_request_url = m.model_request_url,
           model_provider = m.model_provider,
           model_type = m.model_type,
           model_qualified_name = m.model_qualified_name,
           model_auth_type = m.model_auth_type,
           model_auth_id = m.model_auth_id,
           header_gen_fn = m.header_gen_fn,
           input_transform_fn = m.input_transform_fn,
           output_transform_fn = m.output_transform_fn,
           input_batch_transform_fn = m.input_batch_transform_fn,
           output_batch_transform_fn = m.output_batch_transform_fn
     WHERE t.model_id = m.model_id;
END
$gml$;
COMMENT ON PROCEDURE google_ml.alter_model(varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar, varchar) IS 'Change a registered model endpoint: only the fields given (an empty string clears an optional one)';

CREATE PROCEDURE google_ml.drop_model(model_id varchar)
LANGUAGE plpgsql
AS $gml$
BEGIN
    PERFORM google_ml._check_id('model_id', drop_model.model_id);
    DELETE FROM google_ml.models AS t WHERE t.model_id = drop_model.model_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Model does not exist for model_id: %', drop_model.model_id
            USING ERRCODE = 'undefined_object';
    END IF;
END
$gml$;
COMMENT ON PROCEDURE google_ml.drop_model(varchar) IS 'Remove a registered model endpoint';

-- RETURNS record, as in AlloyDB: SELECT google_ml.list_model('id') gives one composite
-- value; SELECT * FROM google_ml.list_model('id') AS t(model_id varchar, ...) gives the 13
-- columns. LANGUAGE sql (not plpgsql) so that a column definition list with compatible
-- types (e.g. varchar for model_availability) is accepted, not only the exact ones.
CREATE FUNCTION google_ml.list_model(model_id varchar)
RETURNS record
LANGUAGE sql STABLE
AS $gml$
    SELECT r.model_id, r.model_availability, r.model_request_url, r.model_provider,
           r.model_type, r.model_qualified_name, r.model_auth_type, r.model_auth_id,
           r.header_gen_fn, r.input_transform_fn, r.output_transform_fn,
           r.input_batch_transform_fn, r.output_batch_transform_fn
    FROM google_ml._model_row($1) AS r
$gml$;
COMMENT ON FUNCTION google_ml.list_model(varchar) IS 'A registered model endpoint as one record (the columns of model_info_view); raises for an unknown id';

-------------------------------------------------------------------------------------------
-- Secret management
-------------------------------------------------------------------------------------------

CREATE FUNCTION google_ml._check_secret_path(secret_path varchar)
RETURNS varchar
LANGUAGE plpgsql IMMUTABLE
AS $gml$
BEGIN
    IF secret_path IS NULL THEN
        RAISE EXCEPTION 'secret_path cannot be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF btrim(secret_path) = '' THEN
        RAISE EXCEPTION 'secret_path cannot be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN secret_path;
END
$gml$;
COMMENT ON FUNCTION google_ml._check_secret_path(varchar) IS 'Internal: raise unless secret_path is usable';

CREATE PROCEDURE google_ml.create_sm_secret(secret_id varchar, secret_path varchar)
LANGUAGE plpgsql
AS $gml$
BEGIN
    PERFORM google_ml._check_id('secret_id', create_sm_secret.secret_id);
    PERFORM google_ml._check_secret_path(create_sm_secret.secret_path);
    INSERT INTO google_ml.sm_secrets (secret_id, secret_path)
    VALUES (create_sm_secret.secret_id, create_sm_secret.secret_path)
    ON CONFLICT ON CONSTRAINT sm_secrets_pkey DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Secret already exists for secret_id: %', create_sm_secret.secret_id
            USING ERRCODE = 'unique_violation',
                  HINT = 'Change it with google_ml.alter_sm_secret.';
    END IF;
END
$gml$;
COMMENT ON PROCEDURE google_ml.create_sm_secret(varchar, varchar) IS 'Register a secret reference (secret_path, e.g. projects/P/secrets/S/versions/N) under secret_id';

CREATE PROCEDURE google_ml.alter_sm_secret(secret_id varchar, secret_path varchar)
LANGUAGE plpgsql
AS $gml$
BEGIN
    PERFORM google_ml._check_id('secret_id', alter_sm_secret.secret_id);
    PERFORM google_ml._check_secret_path(alter_sm_secret.secret_path);
    UPDATE google_ml.sm_secrets AS s
       SET secret_path = alter_sm_secret.secret_path
     WHERE s.secret_id = alter_sm_secret.secret_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Secret does not exist for secret_id: %', alter_sm_secret.secret_id
            USING ERRCODE = 'undefined_object';
    END IF;
END
$gml$;
COMMENT ON PROCEDURE google_ml.alter_sm_secret(varchar, varchar) IS 'Point a registered secret_id at another secret_path';

CREATE PROCEDURE google_ml.drop_sm_secret(secret_id varchar)
LANGUAGE plpgsql
AS $gml$
DECLARE
    users text;
BEGIN
    PERFORM google_ml._check_id('secret_id', drop_sm_secret.secret_id);
    SELECT string_agg(m.model_id, ', ' ORDER BY m.model_id) INTO users
      FROM google_ml.models AS m
     WHERE m.model_auth_id = drop_sm_secret.secret_id;
    IF users IS NOT NULL THEN
        RAISE EXCEPTION 'Secret % is still used by model_id: %', drop_sm_secret.secret_id, users
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'Drop those models, or give them another model_auth_id, first.';
    END IF;
    DELETE FROM google_ml.sm_secrets AS s WHERE s.secret_id = drop_sm_secret.secret_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'Secret does not exist for secret_id: %', drop_sm_secret.secret_id
            USING ERRCODE = 'undefined_object';
    END IF;
END
$gml$;
COMMENT ON PROCEDURE google_ml.drop_sm_secret(varchar) IS 'Remove a secret reference no model uses any more';

-------------------------------------------------------------------------------------------
-- Data: models with built-in support, pre-registered models
-------------------------------------------------------------------------------------------

INSERT INTO google_ml.builtin_models
    (model_provider, model_qualified_name, model_type, model_request_url,
     header_gen_fn, input_transform_fn, output_transform_fn)
VALUES
    ('google', 'text-embedding-gecko@001', 'text_embedding', 'publishers/google/models/text-embedding-gecko@001',
     NULL, 'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform'),
    ('google', 'text-embedding-gecko@003', 'text_embedding', 'publishers/google/models/text-embedding-gecko@003',
     NULL, 'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform'),
    ('google', 'text-embedding-004', 'text_embedding', 'publishers/google/models/text-embedding-004',
     NULL, 'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform'),
    ('google', 'text-embedding-preview-0815', 'text_embedding', 'publishers/google/models/text-embedding-preview-0815',
     NULL, 'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform'),
    ('google', 'text-multilingual-embedding-002', 'text_embedding', 'publishers/google/models/text-multilingual-embedding-002',
     NULL, 'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform'),
    ('open_ai', 'text-embedding-ada-002', 'text_embedding', 'https://api.openai.com/v1/embeddings',
     NULL, 'google_ml.openai_text_embedding_input_transform', 'google_ml.openai_text_embedding_output_transform'),
    ('open_ai', 'text-embedding-3-small', 'text_embedding', 'https://api.openai.com/v1/embeddings',
     NULL, 'google_ml.openai_text_embedding_input_transform', 'google_ml.openai_text_embedding_output_transform'),
    ('open_ai', 'text-embedding-3-large', 'text_embedding', 'https://api.openai.com/v1/embeddings',
     NULL, 'google_ml.openai_text_embedding_input_transform', 'google_ml.openai_text_embedding_output_transform'),
    ('anthropic', 'claude-3-opus-20240229', 'generic', 'https://api.anthropic.com/v1/messages',
     'google_ml.anthropic_claude_header_gen_fn', NULL, NULL),
    ('anthropic', 'claude-3-sonnet-20240229', 'generic', 'https://api.anthropic.com/v1/messages',
     'google_ml.anthropic_claude_header_gen_fn', NULL, NULL),
    ('anthropic', 'claude-3-haiku-20240307', 'generic', 'https://api.anthropic.com/v1/messages',
     'google_ml.anthropic_claude_header_gen_fn', NULL, NULL);

-- Vertex AI models usable right after CREATE EXTENSION. Their URLs are relative: the proxy
-- resolves them against its configured Google project and region.
INSERT INTO google_ml.models
    (model_id, model_request_url, model_provider, model_type, model_qualified_name,
     model_auth_type, input_transform_fn, output_transform_fn)
VALUES
    ('textembedding-gecko', 'publishers/google/models/textembedding-gecko', 'google', 'text_embedding',
     'textembedding-gecko', 'alloydb_service_agent_iam',
     'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform'),
    ('text-embedding-gecko@001', 'publishers/google/models/text-embedding-gecko@001', 'google', 'text_embedding',
     'text-embedding-gecko@001', 'alloydb_service_agent_iam',
     'google_ml.vertexai_text_embedding_input_transform', 'google_ml.vertexai_text_embedding_output_transform'),
    ('gemini-1.5-pro:generateContent', 'publishers/google/models/gemini-1.5-pro:generateContent', 'google', 'generic',
     'gemini-1.5-pro:generateContent', 'alloydb_service_agent_iam', NULL, NULL),
    ('gemini-1.5-pro:streamGenerateContent', 'publishers/google/models/gemini-1.5-pro:streamGenerateContent', 'google', 'generic',
     'gemini-1.5-pro:streamGenerateContent', 'alloydb_service_agent_iam', NULL, NULL),
    ('gemini-1.0-pro:generateContent', 'publishers/google/models/gemini-1.0-pro:generateContent', 'google', 'generic',
     'gemini-1.0-pro:generateContent', 'alloydb_service_agent_iam', NULL, NULL);

-- ---------------------------------------------------------------------------------------
-- Prediction functions
--
-- The proxy makes every model call ("pre-warm, then forward"). Before it forwards a
-- statement that calls these functions, it stores each call's answer in this session's
-- results store, the temporary table google_ml_results, keyed by google_ml._call_key();
-- the functions only look the answer up. So they can be IMMUTABLE, as AlloyDB declares
-- them: a STORED generated column may call them, and `ORDER BY emb <=>
-- google_ml.embedding('m', $1)::vector` is folded at plan time and uses the index. They are
-- PARALLEL RESTRICTED because parallel workers cannot read a temporary table.
--
-- No stored answer: in collect mode (the proxy runs the statement once with the
-- placeholder setting pg_model_proxy.collect = on, then rolls it back) the call is reported
-- as a NOTICE with SQLSTATE PX001's twin PX002 and its arguments as JSON in DETAIL, and a
-- placeholder flows on (a unit vector of the model's dimension when the store knows it, so
-- casts to vector(n) and constraints pass). Otherwise the call fails with PX001: the
-- statement did not come through pg-model-proxy.
-- ---------------------------------------------------------------------------------------

-- The store's key for one call: the database computes it, so the proxy and the functions
-- can never disagree. Parts are length-prefixed (text cannot hold a separator byte that
-- input could not contain).
CREATE FUNCTION google_ml._call_key(fn text, model_id text, input text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
RETURN encode(sha256(convert_to(
    length(fn)::text || ':' || fn || length(model_id)::text || ':' || model_id || input, 'UTF8')), 'hex');
COMMENT ON FUNCTION google_ml._call_key(text, text, text) IS 'Key of one prediction call in the session results store (internal)';

-- Creates this session's results store if it does not exist yet (the proxy calls it).
CREATE FUNCTION google_ml._results_store()
RETURNS void
LANGUAGE plpgsql
AS $gml$
BEGIN
    IF to_regclass('pg_temp.google_ml_results') IS NULL THEN
        CREATE TEMPORARY TABLE google_ml_results (
            key text PRIMARY KEY,       -- google_ml._call_key(fn, model_id, input), or 'dim:' || model_id
            embedding real[],           -- the answer of google_ml.embedding
            response json,              -- the answer of google_ml.predict_row
            error json                  -- or why there is none: {"message", "sqlstate"}, raised by the call
        );
    END IF;
    -- Where the proxy COPYs answers in (binary) before keying them into google_ml_results.
    IF to_regclass('pg_temp.google_ml_load') IS NULL THEN
        CREATE TEMPORARY TABLE google_ml_load (fn text, model_id text, input text, embedding real[], response json, error json);
    END IF;
END
$gml$;
COMMENT ON FUNCTION google_ml._results_store() IS 'Creates the session results store of pg-model-proxy (internal)';

-- Raises an error for pg-model-proxy: a prepared statement whose model calls failed is
-- replaced by SELECT google_ml._raise(message, sqlstate, $1::text, ...), which accepts the
-- client's parameters and fails like the statement would have (internal).
CREATE FUNCTION google_ml._raise(message text, sqlstate text, VARIADIC parameters text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $gml$
BEGIN
    RAISE EXCEPTION '%', message USING ERRCODE = sqlstate;
END
$gml$;

CREATE FUNCTION google_ml._check_model_support()
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $gml$
BEGIN
    IF lower(coalesce(nullif(current_setting('google_ml_integration.enable_model_support', true), ''), 'on'))
            IN ('off', 'false', '0', 'no') THEN
        RAISE EXCEPTION 'model support is disabled'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'SET google_ml_integration.enable_model_support = on';
    END IF;
END
$gml$;

-- A call the proxy could not answer (unknown model, provider error, ...) has its error
-- stored instead: the call raises it, with the SQLSTATE the proxy chose.
CREATE FUNCTION google_ml._raise_stored(error json)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $gml$
BEGIN
    IF error IS NOT NULL THEN
        RAISE EXCEPTION '%', error->>'message' USING ERRCODE = coalesce(error->>'sqlstate', '38000');
    END IF;
END
$gml$;

-- What a miss does: report it (collect mode) or fail. Returns true in collect mode.
CREATE FUNCTION google_ml._miss(fn text, model_id text, input text)
RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
AS $gml$
DECLARE
    call text := json_build_object('fn', fn, 'model_id', model_id, 'input', input)::text;
BEGIN
    IF current_setting('pg_model_proxy.collect', true) = 'on' THEN
        RAISE NOTICE 'pg-model-proxy: model call' USING ERRCODE = 'PX002', DETAIL = call;
        RETURN true;
    END IF;
    RAISE EXCEPTION 'google_ml.%: no result for this call of model "%"', fn, model_id
        USING ERRCODE = 'PX001', DETAIL = call,
              HINT = 'pg-model-proxy makes model calls before a statement runs, and did not foresee this one: '
                     'run it through the proxy; a pipeline outside a transaction needs BEGIN ... COMMIT; '
                     'after DDL made elsewhere, run it again.';
END
$gml$;

CREATE FUNCTION google_ml.embedding(model_id varchar, content text)
RETURNS real[]
LANGUAGE plpgsql IMMUTABLE PARALLEL RESTRICTED
AS $gml$
DECLARE
    found real[];
    failure json;
    dim integer;
BEGIN
    PERFORM google_ml._check_model_support();
    IF model_id IS NULL OR content IS NULL THEN
        RETURN NULL;
    END IF;
    IF to_regclass('pg_temp.google_ml_results') IS NOT NULL THEN
        EXECUTE 'SELECT embedding, error FROM pg_temp.google_ml_results WHERE key = $1'
            INTO found, failure USING google_ml._call_key('embedding', model_id, content);
        PERFORM google_ml._raise_stored(failure);
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END IF;
    PERFORM google_ml._miss('embedding', model_id, content);
    -- Collect mode: a placeholder of the model's dimension when known (a unit vector, so
    -- cosine distance and HNSW inserts work), else a one-element one.
    IF to_regclass('pg_temp.google_ml_results') IS NOT NULL THEN
        EXECUTE 'SELECT cardinality(embedding) FROM pg_temp.google_ml_results WHERE key = $1'
            INTO dim USING 'dim:' || model_id;
    END IF;
    dim := coalesce(dim, 1);
    RETURN array_fill((1 / sqrt(dim))::real, ARRAY[dim]);
END
$gml$;
COMMENT ON FUNCTION google_ml.embedding(varchar, text) IS 'The embedding of content by a text_embedding model (answered by pg-model-proxy)';

CREATE FUNCTION google_ml.predict_row(model_id varchar, request_body json)
RETURNS json
LANGUAGE plpgsql IMMUTABLE PARALLEL RESTRICTED
AS $gml$
DECLARE
    found json;
    failure json;
BEGIN
    PERFORM google_ml._check_model_support();
    IF model_id IS NULL OR request_body IS NULL THEN
        RETURN NULL;
    END IF;
    IF to_regclass('pg_temp.google_ml_results') IS NOT NULL THEN
        EXECUTE 'SELECT response, error FROM pg_temp.google_ml_results WHERE key = $1'
            INTO found, failure USING google_ml._call_key('predict_row', model_id, request_body::text);
        PERFORM google_ml._raise_stored(failure);
        IF found IS NOT NULL THEN
            RETURN found;
        END IF;
    END IF;
    PERFORM google_ml._miss('predict_row', model_id, request_body::text);
    RETURN '[]'::json;  -- collect mode: ->, ->> and json_array_elements all accept it
END
$gml$;
COMMENT ON FUNCTION google_ml.predict_row(varchar, json) IS 'The raw JSON response of a model to request_body (answered by pg-model-proxy)';

-- The legacy names, in schema public as in AlloyDB. SQL-standard bodies record their
-- dependency on the google_ml functions.
CREATE FUNCTION public.embedding(model_id varchar, content text)
RETURNS real[]
LANGUAGE sql IMMUTABLE PARALLEL RESTRICTED
RETURN google_ml.embedding(model_id, content);
COMMENT ON FUNCTION public.embedding(varchar, text) IS 'Legacy name of google_ml.embedding';

CREATE FUNCTION public.ml_predict_row(model_id varchar, request_body json)
RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL RESTRICTED
RETURN google_ml.predict_row(model_id, request_body);
COMMENT ON FUNCTION public.ml_predict_row(varchar, json) IS 'Legacy name of google_ml.predict_row';
