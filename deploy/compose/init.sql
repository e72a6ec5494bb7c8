-- Run once by the postgres image when it initialises an empty data directory
-- (/docker-entrypoint-initdb.d), as the superuser, in database "app", after
-- 05-outbox-table.sql: deploy/sql/outbox.sql, the default outbox table (the
-- one copy of its DDL; `outbox-relay setup --print-sql` prints the same).
-- Demo credentials: change the password (and OUTBOX_RELAY_SOURCE_URL) for anything real.

-- The relay's role: LOGIN and REPLICATION to stream, SELECT on the outbox.
-- (The postgres image's pg_hba.conf lets every role in from the network with a
-- password: logical replication connections match ordinary database entries.)
CREATE ROLE relay LOGIN REPLICATION PASSWORD 'relay';
GRANT SELECT ON outbox TO relay;

-- The publication (creating one needs ownership of the table, which the relay
-- does not have here) and the slot, created now so that every event committed
-- from the start is streamed, even those written before the relay first runs.
CREATE PUBLICATION outbox_relay FOR TABLE public.outbox WITH (publish = 'insert', publish_via_partition_root = true);
SELECT pg_create_logical_replication_slot('outbox_relay', 'pgoutput');
