"""The partitioned event table's DDL and its upkeep functions: the one place they live.

The upkeep (queue rotation, history partitions) runs as SQL functions owned by the
tables' owner (``SECURITY DEFINER``): a least-privilege listener role may call them but
holds no DDL right itself. Their ``search_path`` is ``pg_catalog, pg_temp`` and every
object of ours is named with its schema, so that no role able to create objects in the
application's schema can slip an operator or a function of its own into them.
``EXECUTE`` on them is revoked from ``PUBLIC`` (``eventbus_role`` grants it). Every lock
they take waits at most ``lock_wait_ms``: a rotation or a partition change that cannot
get its lock gives up and is tried again later, so it never stalls the writers or the
claims queued behind it for longer.
"""

from __future__ import annotations

from psycopg import sql

from eventbus.event import DEAD, DONE, FAILED, PENDING

TABLE = "eventbus_event"
QUEUE = "eventbus_event_queue"  # pending and failed events, LIST (slot)
SLOTS = ("eventbus_event_queue_0", "eventbus_event_queue_1")
SLOT_SEQUENCE = "eventbus_queue_slot"  # its last value: the slot new events go to
DONE_HISTORY = "eventbus_event_done"  # RANGE (finished_at)
DONE_DEFAULT = "eventbus_event_done_default"  # rows outside every span: none, normally
DEAD_LETTERS = "eventbus_event_deadletter"
FUNCTIONS = (
    "eventbus_rotate_queue(bigint, integer, integer)",
    "eventbus_prepare_history(integer, integer, integer, timestamp with time zone)",
    "eventbus_expire_history(timestamp with time zone, integer)",
)

# Every column an event row has, but the queue slot (its default picks the current one).
# The marks move rows by listing them; tests check this against the model's fields.
COLUMNS = (
    "id",
    "channel",
    "operation",
    "table_name",
    "key",
    "ordered",
    "old",
    "new",
    "state",
    "attempts",
    "transient_errors",
    "created_at",
    "run_after",
    "first_claimed_at",
    "finished_at",
    "last_error",
    "errors",
    "worker",
    "duration",
    "caused_by",
    "correlation_id",
    "traceparent",
)


def _lit(*values: str) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Literal, values))


def create(name: str, like: str) -> list[sql.Composed]:
    """The partitioned table `name` with the columns, defaults and identity of `like`,
    its partitions and indexes (history partitions come from eventbus_prepare_history)."""
    t = sql.Identifier(name)
    return [
        sql.SQL(
            "CREATE TABLE {t} (LIKE {like} INCLUDING DEFAULTS INCLUDING IDENTITY "
            "INCLUDING CONSTRAINTS) PARTITION BY LIST (state)"
        ).format(t=t, like=sql.Identifier(like)),
        sql.SQL(
            "CREATE SEQUENCE IF NOT EXISTS {seq} AS smallint MINVALUE 0 MAXVALUE {top} CYCLE"
        ).format(seq=sql.Identifier(SLOT_SEQUENCE), top=sql.Literal(len(SLOTS) - 1)),
        sql.SQL("SELECT setval({seq}, 0, true)").format(seq=sql.Literal(SLOT_SEQUENCE)),
        # Writers read the slot in the column default: reading a number is harmless.
        sql.SQL("GRANT SELECT ON SEQUENCE {} TO PUBLIC").format(sql.Identifier(SLOT_SEQUENCE)),
        sql.SQL(
            "ALTER TABLE {t} ADD COLUMN slot smallint NOT NULL "
            "DEFAULT pg_sequence_last_value({seq}::regclass)::smallint"
        ).format(t=t, seq=sql.Literal(SLOT_SEQUENCE)),
        sql.SQL(
            "CREATE TABLE {q} PARTITION OF {t} FOR VALUES IN ({runnable}) PARTITION BY LIST (slot)"
        ).format(q=sql.Identifier(QUEUE), t=t, runnable=_lit(PENDING, FAILED)),
        *(
            sql.SQL("CREATE TABLE {s} PARTITION OF {q} FOR VALUES IN ({n})").format(
                s=sql.Identifier(slot), q=sql.Identifier(QUEUE), n=sql.Literal(n)
            )
            for n, slot in enumerate(SLOTS)
        ),
        sql.SQL(
            "CREATE TABLE {h} PARTITION OF {t} FOR VALUES IN ({done}) "
            "PARTITION BY RANGE (finished_at)"
        ).format(h=sql.Identifier(DONE_HISTORY), t=t, done=sql.Literal(DONE)),
        sql.SQL("CREATE TABLE {d} PARTITION OF {h} DEFAULT").format(
            d=sql.Identifier(DONE_DEFAULT), h=sql.Identifier(DONE_HISTORY)
        ),
        sql.SQL("CREATE TABLE {d} PARTITION OF {t} FOR VALUES IN ({dead})").format(
            d=sql.Identifier(DEAD_LETTERS), t=t, dead=sql.Literal(DEAD)
        ),
        # No primary key (a partitioned table's would have to hold the state): a replica
        # identity of its own on every leaf, so that a publication of all tables (logical
        # replication, change data capture) does not refuse deletes and updates.
        *(
            sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(leaf))
            for leaf in (*SLOTS, DONE_DEFAULT, DEAD_LETTERS)
        ),
        # By id: the claim's walk in id order (each queue slot), and look-ups anywhere.
        sql.SQL("CREATE INDEX eventbus_event_by_id ON {t} (id)").format(t=t),
        # A collection's members (events tree, the status API).
        sql.SQL(
            "CREATE INDEX eventbus_event_by_collection ON {t} (correlation_id) "
            "WHERE correlation_id IS NOT NULL"
        ).format(t=t),
        # Ordered channels: "is an older event of this key still runnable?"
        sql.SQL(
            "CREATE INDEX eventbus_event_queue_by_key ON {q} (channel, key, id) WHERE ordered"
        ).format(q=sql.Identifier(QUEUE)),
        # recover --dead and operators.
        sql.SQL("CREATE INDEX eventbus_event_deadletter_by_channel ON {d} (channel, id)").format(
            d=sql.Identifier(DEAD_LETTERS)
        ),
    ]


# Queue rotation, in two steps that one call may both take. (1) The other slot, which
# new events stopped going to at the last switch, is emptied by TRUNCATE once it has
# drained (at most `max_moved` events left: a failed one waiting for its retry, say, or
# one written by a transaction that began before the switch); those few move to the
# current slot first, same id, same state, under the drained slot's ACCESS EXCLUSIVE
# lock, which no claim then holds. (2) Once the drained slot is empty and the current
# one holds `max_dead` dead rows that vacuum has not removed (the statistics' count: it
# grows while a snapshot is held, and stays low while vacuum keeps up), or 64 MB, new
# events go to the other.
# Returns what it did: "emptied N" (N events moved), "switched", both, or why it did
# nothing: small (not due), busy (another session rotates), backlog (the drained slot
# holds more than `max_moved` events: moving them would cost more than waiting), locked
# (a claim transaction held the drained slot past `lock_wait_ms`, or a transaction older
# than 2 s holds it: no wait then, which would only hold up the claims queued behind).
ROTATE = """
CREATE OR REPLACE FUNCTION eventbus_rotate_queue(
    max_dead bigint, max_moved integer, lock_wait_ms integer)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sch constant text := {schema};
    current_slot integer;
    other_slot integer;
    other_name text;
    moved bigint;
    done text := '';
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('eventbus:rotate', 0)) THEN
        RETURN 'busy';
    END IF;
    current_slot := pg_sequence_last_value(
        format('%I.%I', sch, 'eventbus_queue_slot')::regclass)::integer;
    other_slot := 1 - current_slot;
    other_name := 'eventbus_event_queue_' || other_slot;
    IF pg_relation_size(format('%I.%I', sch, other_name)::regclass) > 0 THEN
        EXECUTE format('SELECT count(*) FROM (SELECT FROM %I.%I LIMIT %s) AS s',
            sch, other_name, max_moved + 1) INTO moved;
        IF moved > max_moved THEN
            RETURN 'backlog';
        END IF;
        -- A transaction of another session that began long before holds it (one that
        -- read the event table and stays open): waiting would only hold up claims.
        IF EXISTS (SELECT FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
                WHERE l.locktype = 'relation'
                AND l.relation = format('%I.%I', sch, other_name)::regclass
                AND l.granted AND a.pid <> pg_backend_pid()
                AND a.xact_start < clock_timestamp() - make_interval(secs => 2)) THEN
            RETURN 'locked';
        END IF;
        PERFORM set_config('lock_timeout', lock_wait_ms || 'ms', true);
        BEGIN
            EXECUTE format('LOCK TABLE %I.%I IN ACCESS EXCLUSIVE MODE', sch, other_name);
        EXCEPTION WHEN lock_not_available THEN
            RETURN 'locked';
        END;
        EXECUTE format('UPDATE %I.eventbus_event_queue SET slot = $1 WHERE slot = $2', sch)
            USING current_slot, other_slot;
        GET DIAGNOSTICS moved = ROW_COUNT;
        EXECUTE format('TRUNCATE %I.%I', sch, other_name);
        done := 'emptied ' || moved;
    END IF;
    IF pg_stat_get_dead_tuples(
            format('%I.%I', sch, 'eventbus_event_queue_' || current_slot)::regclass)
            >= max_dead
        OR pg_total_relation_size(
            format('%I.%I', sch, 'eventbus_event_queue_' || current_slot)::regclass)
            >= 64 * 1024 * 1024 THEN
        PERFORM setval(format('%I.%I', sch, 'eventbus_queue_slot')::regclass, other_slot, true);
        done := concat_ws(', ', nullif(done, ''), 'switched');
    END IF;
    RETURN coalesce(nullif(done, ''), 'small');
END $$
"""

# History partitions for the spans from `since`'s (now's by default) to `ahead` spans
# after now's, each `span_seconds` long and aligned to the epoch (UTC); where partitions
# exist already (the span setting changed), only the part of a span that none covers.
# Each is made on its own and then attached, which locks the done history against
# marks for a moment only; done events that went to the default partition meanwhile (no
# partition existed) move into it, under the default partition's lock. Each gets a
# replica identity, so that a publication of all tables (logical replication, change
# data capture) does not refuse the marks' deletes. Returns how many it made.
PREPARE_HISTORY = """
CREATE OR REPLACE FUNCTION eventbus_prepare_history(
    span_seconds integer, ahead integer, lock_wait_ms integer,
    since timestamptz DEFAULT now())
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sch constant text := {schema};
    span_start timestamptz := to_timestamp(
        floor(extract(epoch FROM least(since, now())) / span_seconds) * span_seconds);
    last_start timestamptz := to_timestamp(
        (floor(extract(epoch FROM now()) / span_seconds) + ahead) * span_seconds);
    span_lo timestamptz;
    span_hi timestamptz;
    span_cut timestamptz;
    name text;
    made integer := 0;
BEGIN
    PERFORM set_config('lock_timeout', lock_wait_ms || 'ms', true);
    CREATE TEMP TABLE IF NOT EXISTS pg_temp.eventbus_history_bounds (
        lo timestamptz, hi timestamptz) ON COMMIT DROP;
    TRUNCATE pg_temp.eventbus_history_bounds;
    INSERT INTO pg_temp.eventbus_history_bounds SELECT b[1]::timestamptz, b[2]::timestamptz
        FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid,
        LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
            'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') AS b
        WHERE i.inhparent = format('%I.%I', sch, 'eventbus_event_done')::regclass
        AND b IS NOT NULL;
    WHILE span_start <= last_start LOOP
        span_lo := span_start;
        span_hi := span_start + make_interval(secs => span_seconds);
        WHILE span_lo < span_hi LOOP
            SELECT max(b.hi) INTO span_cut FROM pg_temp.eventbus_history_bounds AS b
                WHERE b.lo <= span_lo AND b.hi > span_lo;
            IF span_cut IS NOT NULL THEN
                span_lo := span_cut;  -- covered up to there
                CONTINUE;
            END IF;
            SELECT coalesce(min(b.lo), span_hi) INTO span_cut
                FROM pg_temp.eventbus_history_bounds AS b WHERE b.lo > span_lo AND b.lo < span_hi;
            name := 'eventbus_event_done_'
                || to_char(span_lo AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS');
            BEGIN
                EXECUTE format('LOCK TABLE %I.eventbus_event_done_default '
                    'IN ACCESS EXCLUSIVE MODE', sch);
                EXECUTE format('CREATE TABLE %I.%I (LIKE %I.eventbus_event_done '
                    'INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', sch, name, sch);
                EXECUTE format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', sch, name);
                EXECUTE format('WITH m AS (DELETE FROM %I.eventbus_event_done_default '
                    'WHERE finished_at >= %L AND finished_at < %L RETURNING *) '
                    'INSERT INTO %I.%I SELECT * FROM m', sch, span_lo, span_cut, sch, name);
                EXECUTE format('ALTER TABLE %I.eventbus_event_done ATTACH PARTITION %I.%I '
                    'FOR VALUES FROM (%L) TO (%L)', sch, sch, name, span_lo, span_cut);
                INSERT INTO pg_temp.eventbus_history_bounds VALUES (span_lo, span_cut);
                made := made + 1;
            EXCEPTION
                WHEN lock_not_available THEN RETURN made;  -- again at the next round
            END;
            span_lo := span_cut;
        END LOOP;
        span_start := span_start + make_interval(secs => span_seconds);
    END LOOP;
    RETURN made;
END $$
"""

# Retention: every history partition that ends at or before `before` is emptied by
# TRUNCATE (it locks only that partition, which no mark writes to any more) and then
# dropped if its parent's lock comes within `lock_wait_ms` (else an empty table stays
# until the next round). Done events in the default partition, which holds none
# normally, are deleted. Returns the events removed (counted; for a partition over 64 MB,
# the planner's estimate: a count would read it all).
EXPIRE_HISTORY = """
CREATE OR REPLACE FUNCTION eventbus_expire_history(before timestamptz, lock_wait_ms integer)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sch constant text := {schema};
    part record;
    rows_in bigint;
    removed bigint := 0;
BEGIN
    PERFORM set_config('lock_timeout', lock_wait_ms || 'ms', true);
    FOR part IN
        SELECT c.relname, c.reltuples, (regexp_match(pg_get_expr(c.relpartbound, c.oid),
            'TO \\(''([^'']+)''\\)'))[1]::timestamptz AS upper_bound
        FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = format('%I.%I', sch, 'eventbus_event_done')::regclass
        ORDER BY 3
    LOOP
        CONTINUE WHEN part.upper_bound IS NULL OR part.upper_bound > before;
        BEGIN
            IF pg_relation_size(format('%I.%I', sch, part.relname)::regclass)
                    > 64 * 1024 * 1024 THEN
                rows_in := greatest(part.reltuples, 0)::bigint;  -- counting would take long
            ELSE
                EXECUTE format('SELECT count(*) FROM %I.%I', sch, part.relname) INTO rows_in;
            END IF;
            EXECUTE format('TRUNCATE %I.%I', sch, part.relname);
            removed := removed + rows_in;
        EXCEPTION WHEN lock_not_available THEN
            CONTINUE;  -- a reader holds it: at the next round
        END;
        -- DROP locks the done history, and marks wait behind it: not while a
        -- transaction that began over 2 s ago holds it (a report left open).
        CONTINUE WHEN EXISTS (SELECT FROM pg_locks AS l
            JOIN pg_stat_activity AS a ON a.pid = l.pid
            WHERE l.locktype = 'relation' AND l.granted AND a.pid <> pg_backend_pid()
            AND l.relation = format('%I.%I', sch, 'eventbus_event_done')::regclass
            AND a.xact_start < clock_timestamp() - make_interval(secs => 2));
        BEGIN
            EXECUTE format('DROP TABLE %I.%I', sch, part.relname);
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- empty now; dropped at a later round
        END;
    END LOOP;
    EXECUTE format('DELETE FROM %I.eventbus_event_done_default WHERE finished_at < $1', sch)
        USING before;
    GET DIAGNOSTICS rows_in = ROW_COUNT;
    RETURN removed + rows_in;
END $$
"""


def functions(schema: str) -> list[sql.Composed]:
    """Create (or replace) the upkeep functions, executable by their owner only."""
    made = [
        sql.SQL(source.replace("{schema}", "{}")).format(sql.Literal(schema))
        for source in (ROTATE, PREPARE_HISTORY, EXPIRE_HISTORY)
    ]
    return made + [
        sql.SQL("REVOKE ALL ON FUNCTION {} FROM PUBLIC").format(sql.SQL(signature))
        for signature in FUNCTIONS
    ]


DROP_FUNCTIONS = [sql.SQL("DROP FUNCTION IF EXISTS {}").format(sql.SQL(f)) for f in FUNCTIONS]

ROTATE_QUEUE = "SELECT eventbus_rotate_queue(%s, %s, %s)"
PREPARE = "SELECT eventbus_prepare_history(%s, %s, %s, coalesce(%s, now()))"
EXPIRE = "SELECT eventbus_expire_history(%s, %s)"
IS_PARTITIONED = (
    "SELECT c.relkind = 'p', n.nspname FROM pg_class AS c "
    "JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)"
)

# What health and metrics read: the queue's size (its slots' tables, indexes and TOAST),
# and the sessions that have held a lock on a slot since a transaction older than
# `seconds` began (a rotation's TRUNCATE waits for them), longest first.
QUEUE_BYTES = (
    "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint "
    "FROM pg_partition_tree('eventbus_event_queue') WHERE isleaf"
)
QUEUE_LOCKERS = (
    "SELECT a.pid, coalesce(nullif(a.application_name, ''), a.usename::text, '?'), "
    "coalesce(a.state, '?'), extract(epoch FROM now() - a.xact_start) "
    "FROM pg_stat_activity AS a WHERE a.pid <> pg_backend_pid() "
    "AND a.xact_start < now() - make_interval(secs => %s) AND EXISTS (SELECT FROM pg_locks "
    "AS l WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation' AND l.relation IN "
    "(SELECT relid FROM pg_partition_tree('eventbus_event_queue'))) ORDER BY 4 DESC"
)
