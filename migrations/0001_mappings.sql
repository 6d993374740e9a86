-- outsock mapping database, step 1: the dummy-IPv4 <-> IPv6 mappings.
-- Written only by outsock-dns-cache; read by host-server (fallback) and by people in sqlite3.
-- Forward-only: never edit this file once released; add 0002_*.sql instead.

-- One row per dummy address. The dummy is the key because it is what guests and host-server
-- hold on to; recycling an address replaces its row.
CREATE TABLE mappings (
    ipv4        INTEGER PRIMARY KEY,              -- dummy IPv4 address as a 32-bit number
    ipv6        TEXT    NOT NULL,                 -- canonical text (RFC 5952)
    direction   TEXT    NOT NULL CHECK (direction IN ('synthesised', 'inbound-peer')),
    created_ms  INTEGER NOT NULL,                 -- Unix time in milliseconds
    last_used_ms INTEGER NOT NULL,                -- last answer or use
    expires_ms  INTEGER NOT NULL,                 -- end of the last answer's TTL
    pins        INTEGER NOT NULL DEFAULT 0 CHECK (pins >= 0),
    UNIQUE (ipv6, direction)                      -- one dummy per IPv6 address and pool
);

-- Names an address was synthesised for (PTR answers), at most a few per mapping, in the
-- order they were first seen (rowid order).
CREATE TABLE mapping_names (
    ipv4 INTEGER NOT NULL REFERENCES mappings (ipv4) ON DELETE CASCADE,
    name TEXT    NOT NULL,
    PRIMARY KEY (ipv4, name)
);

-- What an operator reads: `sqlite3 mappings.sqlite3 'select * from mappings_view'`.
-- Times are UTC.
CREATE VIEW mappings_view AS
SELECT
    ((m.ipv4 >> 24) & 255) || '.' || ((m.ipv4 >> 16) & 255) || '.' ||
        ((m.ipv4 >> 8) & 255) || '.' || (m.ipv4 & 255)            AS ipv4,
    m.ipv6                                                         AS ipv6,
    (SELECT group_concat(name, ' ') FROM
        (SELECT n.name FROM mapping_names n WHERE n.ipv4 = m.ipv4 ORDER BY n.rowid)) AS names,
    m.direction                                                    AS direction,
    strftime('%Y-%m-%d %H:%M:%f', m.created_ms / 1000.0, 'unixepoch')   AS created,
    strftime('%Y-%m-%d %H:%M:%f', m.last_used_ms / 1000.0, 'unixepoch') AS last_used,
    strftime('%Y-%m-%d %H:%M:%f', m.expires_ms / 1000.0, 'unixepoch')   AS expires,
    m.pins                                                         AS pins
FROM mappings m
ORDER BY m.ipv4;
