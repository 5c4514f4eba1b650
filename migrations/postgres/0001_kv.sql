-- Every table of the store as rows of one PostgreSQL table: the table's
-- name, the key and the value, all bytes as redb holds them. `bytea`
-- compares as bytes (memcmp), so `ORDER BY k` is redb's key order and
-- ranges, `first` and `last` agree on both backends.
CREATE TABLE latchkey_kv (
    tbl text NOT NULL,
    k bytea NOT NULL,
    v bytea NOT NULL,
    PRIMARY KEY (tbl, k)
);
