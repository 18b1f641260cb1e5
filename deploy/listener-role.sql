-- A least-privilege eventbus listener role, made by:
--   ./manage.py eventbus_role eventbus_listener --read auth.User blog.Comment --update blog.Post blog.Tag blog.Category
-- Run as the tables' owner; then: ALTER ROLE "eventbus_listener" PASSWORD '…';
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eventbus_listener') THEN
    CREATE ROLE "eventbus_listener" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
  END IF;
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), 'eventbus_listener');
END $$;
GRANT USAGE ON SCHEMA "public" TO "eventbus_listener";
-- claim, mark, publish and purge events; heartbeats; tasks' return values; the limit of alerts on death; the dashboard's rollup; pauses
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "public"."eventbus_event", "public"."eventbus_worker", "public"."eventbus_inflight", "public"."eventbus_task_result", "public"."eventbus_dead_alert", "public"."eventbus_rollup", "public"."eventbus_pause" TO "eventbus_listener";
-- keep the storage small: rotate the queue, make and drop history partitions (functions that run as the tables' owner)
GRANT EXECUTE ON FUNCTION "public".eventbus_rotate_queue(bigint, integer, integer), "public".eventbus_prepare_history(integer, integer, integer, timestamp with time zone), "public".eventbus_expire_history(timestamp with time zone, integer) TO "eventbus_listener";
-- what the handlers read
GRANT SELECT ON TABLE "public"."auth_user", "public"."blog_comment" TO "eventbus_listener";
-- what the handlers update
GRANT SELECT, UPDATE ON TABLE "public"."blog_post", "public"."blog_tag", "public"."blog_category" TO "eventbus_listener";
