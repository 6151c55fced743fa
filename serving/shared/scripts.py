"""The Lua scripts that change shared state, each one atomic on the Redis server.

Numbers cross the wire as strings (Redis turns a Lua number into an integer reply), formatted
with 17 significant digits so that a float survives the round trip. Time is the caller's
(``now`` in ARGV, unix seconds), so that tests can drive every replica with one fake clock;
replicas on different machines need clocks in sync to well under the cooldowns (NTP does it).
"""

from __future__ import annotations

__all__ = [
    "BREAKER",
    "CLAIM",
    "EXPIRE",
    "FEEDBACK",
    "REMEMBER",
    "SNAPSHOT",
    "TALLIES",
    "TALLY_OUTCOME",
]

# Shared helpers, prepended to the scripts that use them.
_COMMON = r"""
local function fmt(x) return string.format('%.17g', x) end
local function num(x, default) if x then return tonumber(x) end return default end
"""

# Breaker and statistics of one model. Keys per model: breaker hash (b), breaker window list
# (w: "ts|ok"), probe slots zset (p: member -> start ts), statistics list (s: "ts|ok|lat|q"),
# derived statistics hash (d). Settings come in one ARGV string, in _BREAKER_ARGS order.
_BREAKER_LIB = r"""
local function cfg_of(raw)
  local c = {}
  local names = {'window_size', 'window_seconds', 'min_calls', 'error_rate_threshold',
    'consecutive_failures', 'cooldown_seconds', 'cooldown_multiplier', 'max_cooldown_seconds',
    'half_open_max_probes', 'half_open_successes', 'probe_timeout_seconds',
    'stats_window_size', 'stats_window_seconds', 'percentile'}
  local i = 1
  for v in string.gmatch(raw, '[^,]+') do c[names[i]] = tonumber(v); i = i + 1 end
  return c
end

-- What time alone changes: the cooldown ending (open -> half_open), stale probe slots.
local function refresh(b, p, now, c, events)
  local h = redis.call('HMGET', b, 'state', 'opened_at', 'cooldown')
  local state = h[1] or 'closed'
  if state == 'open' then
    local cooldown = num(h[3], c.cooldown_seconds)
    if now - num(h[2], now) >= cooldown then
      redis.call('DEL', p)
      redis.call('HSET', b, 'state', 'half_open', 'probe_successes', 0)
      table.insert(events, 'open>half_open>cooldown ' .. fmt(cooldown) .. 's elapsed')
      state = 'half_open'
    end
  elseif state == 'half_open' then
    redis.call('ZREMRANGEBYSCORE', p, '-inf', fmt(now - c.probe_timeout_seconds))
  end
  return state
end

local function open(b, p, now, reason, old, events)
  redis.call('HSET', b, 'state', 'open', 'opened_at', fmt(now))
  redis.call('HINCRBY', b, 'trips', 1)
  redis.call('DEL', p)
  table.insert(events, old .. '>open>' .. reason)
end

local function close(b, w, p, c, reason, old, events)
  redis.call('DEL', w, p)
  redis.call('HSET', b, 'state', 'closed', 'consecutive', 0, 'probe_successes', 0,
    'cooldown', fmt(c.cooldown_seconds))
  redis.call('HDEL', b, 'opened_at')
  if old ~= 'closed' then table.insert(events, old .. '>closed>' .. reason) end
end

local function window_counts(w, now, c)
  local cutoff = now - c.window_seconds
  while true do
    local first = redis.call('LINDEX', w, 0)
    if not first then break end
    local ts = tonumber(string.match(first, '^([^|]+)'))
    if ts > cutoff then break end
    redis.call('LPOP', w)
  end
  local calls, failures = 0, 0
  for _, e in ipairs(redis.call('LRANGE', w, 0, -1)) do
    calls = calls + 1
    if string.sub(e, -1) == '0' then failures = failures + 1 end
  end
  return calls, failures
end

local function percentile(sorted, q)
  local n = #sorted
  local rank = q / 100.0 * (n - 1)
  local lo = math.floor(rank)
  local hi = math.min(lo + 1, n - 1)
  return sorted[lo + 1] + (sorted[hi + 1] - sorted[lo + 1]) * (rank - lo)
end

-- Recompute the derived statistics of list s into hash d (after pruning by age).
local function derive(s, d, now, c)
  local cutoff = now - c.stats_window_seconds
  while true do
    local first = redis.call('LINDEX', s, 0)
    if not first then break end
    if tonumber(string.match(first, '^([^|]+)')) > cutoff then break end
    redis.call('LPOP', s)
  end
  local calls, ok, lat, qsum, qn, oldest = 0, 0, {}, 0, 0, ''
  for _, e in ipairs(redis.call('LRANGE', s, 0, -1)) do
    local ts, succ, l, q = string.match(e, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if oldest == '' then oldest = ts end
    calls = calls + 1
    if succ == '1' then ok = ok + 1 end
    if l ~= '' then table.insert(lat, tonumber(l)) end
    if q ~= '' then qsum = qsum + tonumber(q); qn = qn + 1 end
  end
  table.sort(lat)
  redis.call('DEL', d)
  local fields = {'calls', calls, 'oldest', oldest}
  if calls > 0 then
    table.insert(fields, 'rate'); table.insert(fields, fmt(ok / calls))
  end
  if #lat > 0 then
    for _, pair in ipairs({{'lat', c.percentile}, {'p50', 50}, {'p95', 95}, {'p99', 99}}) do
      table.insert(fields, pair[1]); table.insert(fields, fmt(percentile(lat, pair[2])))
    end
  end
  if qn > 0 then table.insert(fields, 'mq'); table.insert(fields, fmt(qsum / qn)) end
  redis.call('HSET', d, unpack(fields))
end

-- One model's state as a flat list (the order `serving.shared.health` decodes).
local function model_state(b, w, p, d, now, c)
  local h = redis.call('HMGET', b, 'state', 'opened_at', 'cooldown', 'trips', 'consecutive')
  local calls, failures = window_counts(w, now, c)
  local st = redis.call('HMGET', d, 'calls', 'rate', 'lat', 'p50', 'p95', 'p99', 'mq')
  return {h[1] or 'closed', h[2] or '', h[3] or fmt(c.cooldown_seconds), h[4] or '0',
    h[5] or '0', tostring(redis.call('ZCARD', p)), tostring(calls), tostring(failures),
    st[1] or '0', st[2] or '', st[3] or '', st[4] or '', st[5] or '', st[6] or '',
    st[7] or ''}
end
"""

# One breaker operation on one model's keys: the body of BREAKER, and of FEEDBACK's record.
_BREAKER_OP = r"""
-- op "record" (a1 success 1|0, a2 latency|'', a3 quality|''): statistics and breaker
-- op "slot": take a half-open probe slot (result 1 taken or not needed, 0 refused)
-- op "reset": close now with an empty window
-- Returns {result, events (';'-joined "old>new>reason"), model_state...}
local function breaker_op(keys, op, now, c, a1, a2, a3)
  local b, w, p, s, d = keys[1], keys[2], keys[3], keys[4], keys[5]
  local events = {}
  local state = refresh(b, p, now, c, events)
  local result = '1'
  if op == 'record' then
    local ok = a1 == '1'
    redis.call('RPUSH', s, fmt(now) .. '|' .. a1 .. '|' .. a2 .. '|' .. a3)
    redis.call('LTRIM', s, -c.stats_window_size, -1)
    derive(s, d, now, c)
    if state == 'closed' then
      local calls, failures = window_counts(w, now, c)
      redis.call('RPUSH', w, fmt(now) .. '|' .. a1)
      redis.call('LTRIM', w, -c.window_size, -1)
      if ok then
        redis.call('HSET', b, 'consecutive', 0)
      else
        calls, failures = window_counts(w, now, c)
        local consecutive = redis.call('HINCRBY', b, 'consecutive', 1)
        local rate = failures / calls
        if consecutive >= c.consecutive_failures then
          open(b, p, now, consecutive .. ' consecutive failures', state, events)
        elseif calls >= c.min_calls and rate > c.error_rate_threshold then
          open(b, p, now, string.format('error rate %.2f > %.2f over %d calls', rate,
            c.error_rate_threshold, calls), state, events)
        end
      end
    elseif state == 'half_open' and redis.call('ZCARD', p) > 0 then
      redis.call('ZPOPMIN', p)
      if ok then
        redis.call('HSET', b, 'consecutive', 0)
        local done = redis.call('HINCRBY', b, 'probe_successes', 1)
        if done >= c.half_open_successes then
          close(b, w, p, c, done .. ' probe successes', state, events)
        end
      else
        redis.call('HINCRBY', b, 'consecutive', 1)
        local cooldown = num(redis.call('HGET', b, 'cooldown'), c.cooldown_seconds)
        cooldown = math.min(cooldown * c.cooldown_multiplier, c.max_cooldown_seconds)
        redis.call('HSET', b, 'cooldown', fmt(cooldown))
        open(b, p, now, 'probe failed', state, events)
      end
    end
    -- open, or half-open with no probe in flight: late feedback, ignored for the breaker
  elseif op == 'slot' then
    if state == 'open' then
      result = '0'
    elseif state == 'half_open' then
      if redis.call('ZCARD', p) < c.half_open_max_probes then
        local n = redis.call('HINCRBY', b, 'probe_seq', 1)
        redis.call('ZADD', p, fmt(now), tostring(n))
      else
        result = '0'
      end
    end
  elseif op == 'reset' then
    close(b, w, p, c, 'reset', state, events)
  end
  local out = {result, table.concat(events, ';')}
  for _, v in ipairs(model_state(b, w, p, d, now, c)) do table.insert(out, v) end
  return out
end
"""

BREAKER = (
    _COMMON
    + _BREAKER_LIB
    + _BREAKER_OP
    + r"""
-- KEYS: b w p s d of one model.  ARGV: op now cfg [a1 a2 a3] (see breaker_op).
return breaker_op(KEYS, ARGV[1], tonumber(ARGV[2]), cfg_of(ARGV[3]), ARGV[4], ARGV[5], ARGV[6])
"""
)

SNAPSHOT = (
    _COMMON
    + _BREAKER_LIB
    + r"""
-- KEYS: b w p s d for each model in turn.  ARGV: now cfg.
-- Read-mostly: prunes windows and re-derives statistics whose oldest entry aged out.
local now, c = tonumber(ARGV[1]), cfg_of(ARGV[2])
local out = {}
for i = 1, #KEYS, 5 do
  local b, w, p, s, d = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3], KEYS[i + 4]
  local oldest = redis.call('HGET', d, 'oldest')
  if oldest and oldest ~= '' and tonumber(oldest) <= now - c.stats_window_seconds then
    derive(s, d, now, c)
  end
  for _, v in ipairs(model_state(b, w, p, d, now, c)) do table.insert(out, v) end
end
return out
"""
)

# Pending decisions. KEYS: data hash (id -> JSON), times zset (id -> ts), answered hash
# (id -> "\n"-joined models), bytes counter.
_PENDING_LIB = r"""
local function drop(data, times, answered, bytes, id)
  local n = redis.call('HSTRLEN', data, id)
  redis.call('HDEL', data, id)
  redis.call('HDEL', answered, id)
  redis.call('ZREM', times, id)
  if n > 0 then redis.call('DECRBY', bytes, n) end
end

local function expire(data, times, answered, bytes, now, max_age, limit)
  local old = redis.call('ZRANGEBYSCORE', times, '-inf', fmt(now - max_age), 'LIMIT', 0, limit)
  for _, id in ipairs(old) do drop(data, times, answered, bytes, id) end
  return #old
end
"""

REMEMBER = (
    _COMMON
    + _PENDING_LIB
    + r"""
-- ARGV: id json now max_age max_items max_bytes.  Returns {evicted, pending count}.
local data, times, answered, bytes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, json, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_age, max_items, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('HEXISTS', data, id) == 1 then drop(data, times, answered, bytes, id) end
redis.call('HSET', data, id, json)
redis.call('ZADD', times, fmt(now), id)
local total = redis.call('INCRBY', bytes, #json)
local evicted = expire(data, times, answered, bytes, now, max_age, 100)
local count = redis.call('ZCARD', times)
total = tonumber(redis.call('GET', bytes) or '0')
while count > 1 and (count > max_items or total > max_bytes) do
  local oldest = redis.call('ZRANGE', times, 0, 0)[1]
  drop(data, times, answered, bytes, oldest)
  evicted = evicted + 1
  count = count - 1
  total = tonumber(redis.call('GET', bytes) or '0')
end
return {evicted, count}
"""
)

EXPIRE = (
    _COMMON
    + _PENDING_LIB
    + r"""
-- ARGV: now max_age.  Returns {expired, pending count}.
local n = expire(KEYS[1], KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), 10000)
return {n, redis.call('ZCARD', KEYS[2])}
"""
)

_CLAIM_FN = r"""
-- The outcome rules. Returns code ('ok', 'unknown' (also another caller's), 'not_offered',
-- 'answered'), the model, the decision's JSON.
local function claim(data, times, answered, bytes, id, model, caller, now, max_age)
  local json = redis.call('HGET', data, id)
  if not json then return 'unknown', '', '' end
  local ts = tonumber(redis.call('ZSCORE', times, id) or '0')
  if now - ts >= max_age then
    drop(data, times, answered, bytes, id)
    return 'unknown', '', ''
  end
  local d = cjson.decode(json)
  local owner = d.c
  if owner == cjson.null or owner == nil then owner = '' end
  if owner ~= caller then return 'unknown', '', '' end
  if model == '' then model = d.m end
  local offered = (model == d.m)
  for _, f in ipairs(d.f) do if f == model then offered = true end end
  if not offered then return 'not_offered', model, json end
  local done = redis.call('HGET', answered, id) or ''
  for m in string.gmatch(done, '[^\n]+') do
    if m == model then return 'answered', model, json end
  end
  if done == '' then done = model else done = done .. '\n' .. model end
  if #d.f + 1 <= select(2, string.gsub(done, '\n', '')) + 1 then
    drop(data, times, answered, bytes, id)  -- every offered model answered
  else
    redis.call('HSET', answered, id, done)
  end
  return 'ok', model, json
end
"""

CLAIM = (
    _COMMON
    + _PENDING_LIB
    + _CLAIM_FN
    + r"""
-- KEYS: the pending keys.  ARGV: id model('' = the decision's) caller('' = none) now max_age.
local code, model, json = claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3],
  tonumber(ARGV[4]), tonumber(ARGV[5]))
return {code, model, json}
"""
)

_TALLY_FN = r"""
-- Welford's running mean and M2, so that large offsets keep their digits. cost is '' when
-- unknown; escalated is '1' when the gateway answered with a stronger model after a check.
local function tally(h, success, lat, q, cost, escalated)
  redis.call('HINCRBY', h, 'feedback', 1)
  if success == '1' then redis.call('HINCRBY', h, 'successes', 1) end
  if escalated == '1' then redis.call('HINCRBY', h, 'escalated', 1) end
  for _, pair in ipairs({{'lat', lat}, {'q', q}, {'c', cost}}) do
    local name, raw = pair[1], pair[2]
    if raw ~= '' then
      local x = tonumber(raw)
      local v = redis.call('HMGET', h, name .. '_n', name .. '_mean', name .. '_m2')
      local n, mean, m2 = num(v[1], 0) + 1, num(v[2], 0), num(v[3], 0)
      local delta = x - mean
      mean = mean + delta / n
      m2 = m2 + delta * (x - mean)
      redis.call('HSET', h, name .. '_n', n, name .. '_mean', fmt(mean), name .. '_m2', fmt(m2))
    end
  end
end
"""

FEEDBACK = (
    _COMMON
    + _BREAKER_LIB
    + _BREAKER_OP
    + _PENDING_LIB
    + _CLAIM_FN
    + _TALLY_FN
    + r"""
-- One /feedback, one round trip: the outcome rules, then the model's statistics and breaker,
-- then the experiment's tally. The model's and the experiment's keys are known only once the
-- decision is read, so they are built here from the prefix (a standalone Redis, not Cluster).
-- KEYS: the pending keys.  ARGV: id model caller now max_age prefix cfg success latency quality
-- cost escalated.
-- Returns {code, model, json} or {'ok', model, json, breaker_op's reply...}.
local code, model, json = claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3],
  tonumber(ARGV[4]), tonumber(ARGV[5]))
if code ~= 'ok' then return {code, model, json} end
local k = ARGV[6] .. ':'
local keys = {k .. 'breaker:' .. model, k .. 'bwin:' .. model, k .. 'probes:' .. model,
  k .. 'stats:' .. model, k .. 'derived:' .. model}
local out = {code, model, json}
for _, v in ipairs(breaker_op(keys, 'record', tonumber(ARGV[4]), cfg_of(ARGV[7]), ARGV[8], ARGV[9],
    ARGV[10])) do
  table.insert(out, v)
end
local d = cjson.decode(json)
if d.e and d.e ~= cjson.null then
  tally(k .. 'experiment:' .. d.e[1] .. ':' .. d.e[2], ARGV[8], ARGV[9], ARGV[10], ARGV[11],
    ARGV[12])
end
return out
"""
)

TALLY_OUTCOME = (
    _COMMON
    + _TALLY_FN
    + r"""
-- KEYS: the variant's hash.  ARGV: success(1|0) latency|'' quality|'' cost|'' escalated(1|0),
-- or "assign".
if ARGV[1] == 'assign' then return redis.call('HINCRBY', KEYS[1], 'assigned', 1) end
tally(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
"""
)

TALLIES = r"""
-- KEYS: variant hashes.  ARGV: the fields to read from each.
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HMGET', k, unpack(ARGV)) end
return out
"""
