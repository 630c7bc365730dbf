-- Write one poll's result atomically: new and changed entries, their indexes, the source's
-- state and its next due time. Nothing is written unless every entry's stored digest is still
-- the one the caller read (optimistic concurrency: another worker may have written meanwhile).
--
-- KEYS[1] digests hash, KEYS[2] source state hash, KEYS[3] due sorted set, KEYS[4..] the entry
-- and index keys referenced by position below.
-- ARGV: source, next_due, n_state, (field, value) * n_state, n_entries, then per entry:
--   id, expected_digest ('' when new), digest, json, score, entry_key_pos,
--   n_add, add_key_pos * n_add, n_remove, remove_key_pos * n_remove
-- Returns {new, updated} or {-1, id} on a conflict.
local digests, state, due = KEYS[1], KEYS[2], KEYS[3]
local source, next_due = ARGV[1], ARGV[2]
local n_state = tonumber(ARGV[3])
local i = 4 + 2 * n_state
local n = tonumber(ARGV[i])
i = i + 1
local first = i

for _ = 1, n do
  local id, expected = ARGV[i], ARGV[i + 1]
  local current = redis.call('HGET', digests, id) or ''
  if current ~= expected then
    return {-1, id}
  end
  local n_add = tonumber(ARGV[i + 6])
  local n_remove = tonumber(ARGV[i + 7 + n_add])
  i = i + 8 + n_add + n_remove
end

local new, updated = 0, 0
i = first
for _ = 1, n do
  local id, expected, digest, json, score = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  redis.call('SET', KEYS[tonumber(ARGV[i + 5])], json)
  redis.call('HSET', digests, id, digest)
  local n_add = tonumber(ARGV[i + 6])
  for j = 1, n_add do
    redis.call('ZADD', KEYS[tonumber(ARGV[i + 6 + j])], score, id)
  end
  local n_remove = tonumber(ARGV[i + 7 + n_add])
  for j = 1, n_remove do
    redis.call('ZREM', KEYS[tonumber(ARGV[i + 7 + n_add + j])], id)
  end
  if expected == '' then new = new + 1 else updated = updated + 1 end
  i = i + 8 + n_add + n_remove
end

for j = 0, n_state - 1 do
  redis.call('HSET', state, ARGV[4 + 2 * j], ARGV[5 + 2 * j])
end
redis.call('HSET', state, 'new', new)
redis.call('HINCRBY', state, 'stored', new)
if next_due ~= '' then
  redis.call('ZADD', due, next_due, source)
end
return {new, updated}
