-- A session's row keeps its compact binary record (`portcullis_core::record`, the form the cache
-- holds in memory) instead of JSON: opening ten million sessions then decodes records rather than
-- parsing JSON, and the file holds a fifth of the bytes. Rows written before keep their JSON `body`
-- and a NULL `record` until their next change; new rows keep an empty `body`.
ALTER TABLE sessions ADD COLUMN record BLOB;
