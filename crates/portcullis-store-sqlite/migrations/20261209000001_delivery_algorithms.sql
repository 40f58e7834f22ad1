-- The algorithm the client's ID tokens were signed with when the session was created: a removed
-- client's logout token is signed with it. NULL in rows written before (signed then with the
-- provider's first algorithm, as those releases did).
ALTER TABLE oidc_deliveries ADD COLUMN alg TEXT;
