-- Local accounts. `body` is the JSON of portcullis_core::User (password hash as a PHC string).
CREATE TABLE users (
    id       TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    version  INTEGER NOT NULL,
    body     TEXT NOT NULL
);
