-- The same admission as reserve_hot.sql spread over 10,000 organizations' budgets: the
-- contention of many tenants rather than of one.
\set org random(1, 10000)
BEGIN;
UPDATE budget_counters SET reserved_tokens = reserved_tokens + 100, limit_tokens = 1000000000000
 WHERE scope = 'org' AND scope_id = 'org_' || :org AND period = 'month' AND period_start_ms = 0
   AND used_tokens + reserved_tokens + 100 <= 1000000000000;
INSERT INTO reservations (id, org_id, key_id, project_id, model, endpoint, request_id, client_ip,
  provider, upper_bound_tokens, reserved_tokens, holds, created_at, expires_at, settled_at)
VALUES ('res_' || md5(random()::text), 'org_' || :org, 'key_1', '', 'smollm2-135m-instruct',
  '/v1/chat/completions', 'req', '10.0.0.1', 'sluice', 100, 100,
  '[["org","org","month",0,100]]', now(), now() + interval '15 minutes', NULL);
COMMIT;
