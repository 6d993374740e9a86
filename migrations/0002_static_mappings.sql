-- outsock mapping database, step 2: static mappings (an operator's fixed dummy IPv4 <-> IPv6
-- pairs, RFC 7757's explicit address mappings). A static mapping is a row of `mappings`
-- (direction 'synthesised': it lives in the destination pool) with a row here; it is never
-- recycled, expired or flushed. Forward-only: never edit this file once released.

CREATE TABLE static_mappings (
    ipv4 INTEGER PRIMARY KEY REFERENCES mappings (ipv4) ON DELETE CASCADE
);

-- The view now says 'static' for those.
DROP VIEW mappings_view;
CREATE VIEW mappings_view AS
SELECT
    ((m.ipv4 >> 24) & 255) || '.' || ((m.ipv4 >> 16) & 255) || '.' ||
        ((m.ipv4 >> 8) & 255) || '.' || (m.ipv4 & 255)            AS ipv4,
    m.ipv6                                                         AS ipv6,
    (SELECT group_concat(name, ' ') FROM
        (SELECT n.name FROM mapping_names n WHERE n.ipv4 = m.ipv4 ORDER BY n.rowid)) AS names,
    CASE WHEN EXISTS (SELECT 1 FROM static_mappings s WHERE s.ipv4 = m.ipv4)
         THEN 'static' ELSE m.direction END                        AS direction,
    strftime('%Y-%m-%d %H:%M:%f', m.created_ms / 1000.0, 'unixepoch')   AS created,
    strftime('%Y-%m-%d %H:%M:%f', m.last_used_ms / 1000.0, 'unixepoch') AS last_used,
    strftime('%Y-%m-%d %H:%M:%f', m.expires_ms / 1000.0, 'unixepoch')   AS expires,
    m.pins                                                         AS pins
FROM mappings m
ORDER BY m.ipv4;
