-- One settlement on the hot row: charge the actual tokens and release the rest (budgets.py
-- CHARGE), then write the usage record, in one transaction.
BEGIN;
UPDATE budget_counters SET used_tokens = used_tokens + 80, reserved_tokens = reserved_tokens - 0
 WHERE scope = 'org' AND scope_id = 'org_hot' AND period = 'month' AND period_start_ms = 0;
INSERT INTO usage_records (id, created_at, created_ms, request_id, reservation_id, org_id, key_id,
  model, model_digest, endpoint, prompt_tokens, completion_tokens, status, latency_ms, ttft_ms,
  project_id, client_ip, provider)
VALUES ('usage_' || md5(random()::text), now(), (extract(epoch from now()) * 1000)::bigint, 'req',
  NULL, 'org_hot', 'key_1', 'smollm2-135m-instruct', '', '/v1/chat/completions', 20, 60, 'ok',
  120.0, 15.0, '', '10.0.0.1', 'sluice');
COMMIT;
