-- Admission shared by every gateway process of a deployment: each backend's slots, the fair queue, per-user caps
-- and per-minute rates, changed only by this script, so every change is atomic. live/admission.py calls it and
-- says why it works this way.
--
-- A ticket is a JSON record in KEYS[1] under the id its process gave it:
--   u user, n the channel of its process, l the user's cap on generations at once (0: none), o routing policy,
--   b 1 for background work, c candidates: {place, free slots it may have (1 while half-open), slots,
--   1 if preferred (affinity), 1 if the model is loaded there}, in the order its process configured them,
--   s state: r running (p its place), w waiting (k its member in the queue), i background waiting for idle;
--   g how many times it was granted a slot (a message about an older grant is stale).
--
-- KEYS: 1 tickets, 2 queue (sorted set: score the fair tag, member "<seq>|<id>"), 3 leases (sorted set: id, expiry
-- in ms), 4 running per place, 5 running per user, 6 waiting per user, 7 each waiting user's last tag,
-- 8 waiting per place (every candidate counts), 9 meta (v: the tag last served, seq), 10 idle background (list),
-- 11 background running (set), 12 slots per place (only to tell quickly that no slot is free),
-- 13 the user's generations started in the last minute (sorted set; `enter` only).
-- ARGV: 1 operation, 2 the queue's broadcast channel, 3 lease in ms, then the operation's own.

local T, Q, LEASES, RUN, RU, WU, VU, WF, META, IDLE, BG, CAP =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local op, QCH, LEASE = ARGV[1], ARGV[2], tonumber(ARGV[3])
local clock = redis.call('TIME')  -- Redis's clock, not the processes': leases need no synchronised clocks
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local queue_changed = false
local told = {}  -- per process channel: {g = {{id, place, grants}…}, p = {ids taken back}}

local function num(value)
  return tonumber(value) or 0
end

local function get(id)
  local raw = redis.call('HGET', T, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function put(id, rec)
  redis.call('HSET', T, id, cjson.encode(rec))
end

local function tell(rec, kind, item)
  local box = told[rec.n]
  if not box then
    box = {g = {}, p = {}}
    told[rec.n] = box
  end
  table.insert(box[kind], item)
end

local function add(hash, field, by)
  if redis.call('HINCRBY', hash, field, by) <= 0 then redis.call('HDEL', hash, field) end
end

local function lease(id)
  redis.call('ZADD', LEASES, now + LEASE, id)
end

local function may_run(rec)
  return num(rec.l) == 0 or num(redis.call('HGET', RU, rec.u)) < rec.l
end

-- The place routing.choose picks among the candidates with a free slot, or nil: the preferred one (affinity), else
-- one with the model loaded, then the largest free share, then the configured order. least_busy: the largest free
-- share; random: the first free one (its process shuffled them).
local function choose(rec)
  local best, best_loaded, best_share
  for _, c in ipairs(rec.c) do
    local running = num(redis.call('HGET', RUN, c[1]))
    if running < c[2] then
      if rec.o == 'random' then return c[1] end
      local affinity = rec.o ~= 'least_busy'
      if affinity and c[4] == 1 then return c[1] end
      local loaded = (not affinity or c[5] == 1) and 0 or 1
      local share = (c[3] - running) / math.max(c[3], 1)
      if not best or loaded < best_loaded or (loaded == best_loaded and share > best_share) then
        best, best_loaded, best_share = c[1], loaded, share
      end
    end
  end
  return best
end

local function grant(id, rec, place)
  rec.s, rec.p, rec.k, rec.g = 'r', place, nil, num(rec.g) + 1
  put(id, rec)
  redis.call('HINCRBY', RUN, place, 1)
  redis.call('HINCRBY', RU, rec.u, 1)
  if rec.b == 1 then redis.call('SADD', BG, id) end
end

-- Start-time fair queueing: a user's next ticket is tagged one round after the later of their last tagged ticket
-- and the round being served, and tickets are served by tag, then arrival. One user's fifty tickets take rounds
-- 1..50; another's one, arriving later, takes the round being served plus one: it waits one turn, not fifty.
-- `front`: a ticket admitted once already (a failover), tagged with the round being served, before all others.
local function enqueue(id, rec, front)
  local v = num(redis.call('HGET', META, 'v'))
  local tag = v
  local seq = 0
  if not front then
    tag = math.max(v, num(redis.call('HGET', VU, rec.u))) + 1
    redis.call('HSET', VU, rec.u, tag)
    seq = redis.call('HINCRBY', META, 'seq', 1)
  end
  rec.s, rec.p, rec.k = 'w', nil, string.format('%016d', seq) .. '|' .. id
  redis.call('ZADD', Q, tag, rec.k)
  redis.call('HINCRBY', WU, rec.u, 1)
  for _, c in ipairs(rec.c) do redis.call('HINCRBY', WF, c[1], 1) end
  put(id, rec)
  queue_changed = true
end

local function dequeue(rec)
  redis.call('ZREM', Q, rec.k)
  if redis.call('HINCRBY', WU, rec.u, -1) <= 0 then
    redis.call('HDEL', WU, rec.u)
    redis.call('HDEL', VU, rec.u)
  end
  for _, c in ipairs(rec.c) do add(WF, c[1], -1) end
  rec.k = nil
  queue_changed = true
end

-- Give back whatever the ticket holds: its slot, its place in the queue or in the idle line.
local function free(id, rec)
  if rec.s == 'r' then
    add(RUN, rec.p, -1)
    add(RU, rec.u, -1)
    redis.call('SREM', BG, id)
  elseif rec.s == 'w' then
    dequeue(rec)
  elseif rec.s == 'i' then
    redis.call('LREM', IDLE, 0, id)
  end
  rec.s, rec.p = nil, nil
end

local function drop(id, rec)
  free(id, rec)
  redis.call('HDEL', T, id)
  redis.call('ZREM', LEASES, id)
end

-- Tickets whose process stopped renewing them (killed, cut off from Redis): their slots and places come back.
local function reap()
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, 500)) do
    local rec = get(id)
    if rec then drop(id, rec) else redis.call('ZREM', LEASES, id) end
  end
end

-- Whether some place may have a free slot; when no process has said what its places have yet (Redis just
-- started), assume so and look.
local function room()
  local caps = redis.call('HGETALL', CAP)
  if #caps == 0 then return true end
  for i = 1, #caps, 2 do
    if num(redis.call('HGET', RUN, caps[i])) < tonumber(caps[i + 1]) then return true end
  end
  return false
end

-- A slot background work holds on a place the request could use, freed for it; its process is told to stop.
local function take_back(rec)
  local names = {}
  for _, c in ipairs(rec.c) do names[c[1]] = true end
  for _, id in ipairs(redis.call('SMEMBERS', BG)) do
    local held = get(id)
    if held and names[held.p] then
      drop(id, held)
      tell(held, 'p', id)
      return true
    end
  end
  return false
end

-- Free slots to waiting tickets in fair order, skipping users at their cap and tickets no free place serves (one
-- pass: a grant only fills slots, so a ticket skipped once stays unservable in this run); then background work
-- while nothing waits.
local function admit()
  reap()
  if redis.call('ZCARD', Q) > 0 and room() then
    local v = num(redis.call('HGET', META, 'v'))
    local start = 0
    while true do
      local batch = redis.call('ZRANGE', Q, start, start + 49, 'WITHSCORES')
      if #batch == 0 then break end
      local gone = 0
      for i = 1, #batch, 2 do
        local member = batch[i]
        local id = string.sub(member, 18)
        local rec = get(id)
        if not rec then
          redis.call('ZREM', Q, member)
          gone = gone + 1
        elseif may_run(rec) then
          local place = choose(rec)
          if place then
            dequeue(rec)
            grant(id, rec, place)
            tell(rec, 'g', {id, place, rec.g})
            v = math.max(v, tonumber(batch[i + 1]))
            gone = gone + 1
          end
        end
      end
      start = start + #batch / 2 - gone
      if not room() then break end
    end
    redis.call('HSET', META, 'v', v)
  end
  if redis.call('ZCARD', Q) == 0 then
    while true do
      local id = redis.call('LINDEX', IDLE, 0)
      if not id then break end
      local rec = get(id)
      if not rec then
        redis.call('LPOP', IDLE)
      else
        local place = choose(rec)
        if not place then break end
        redis.call('LPOP', IDLE)
        grant(id, rec, place)
        tell(rec, 'g', {id, place, rec.g})
      end
    end
  end
end

local function finish()
  for channel, box in pairs(told) do
    redis.call('PUBLISH', channel, cjson.encode(box))
  end
  if queue_changed then redis.call('PUBLISH', QCH, '1') end
end

-- A ticket as its process needs to know it: "state|place|grants|member" ('' when it is gone).
local function state(id)
  local rec = get(id)
  if not rec then return '' end
  return rec.s .. '|' .. (rec.p or '') .. '|' .. num(rec.g) .. '|' .. (rec.k or '')
end

if op == 'enter' then
  -- ARGV 4 id, 5 record, 6 max queue, 7 max waiting per user, 8 per-minute limit (0: none)
  local id, rec = ARGV[4], cjson.decode(ARGV[5])
  local max_queue, per_user, per_minute = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local RATE = KEYS[13]
  if per_minute > 0 then
    redis.call('ZREMRANGEBYSCORE', RATE, '-inf', now - 60000)
    if redis.call('ZCARD', RATE) >= per_minute then
      local first = redis.call('ZRANGE', RATE, 0, 0, 'WITHSCORES')
      return {'rate', 60000 - (now - tonumber(first[2]))}
    end
  end
  admit()  -- so that whatever waits and fits has its slot before the newcomer is looked at
  local reply
  if may_run(rec) then
    local place = choose(rec)
    if not place and take_back(rec) then place = choose(rec) end
    if place then
      grant(id, rec, place)
      reply = {'r', place, rec.g}
    end
  end
  if not reply then
    local queued = redis.call('ZCARD', Q)
    if num(redis.call('HGET', WU, rec.u)) >= per_user then
      finish()
      return {'user_full', queued}
    end
    if queued >= max_queue then
      finish()
      return {'full', queued}
    end
    enqueue(id, rec, false)
    reply = {'w', rec.k, queued + 1}
  end
  lease(id)
  if per_minute > 0 then
    redis.call('ZADD', RATE, now, id)
    redis.call('PEXPIRE', RATE, 60000)
  end
  finish()
  return reply
elseif op == 'background' then
  -- ARGV 4 id, 5 record: a slot now if one is free and nothing waits, else the idle line
  local id, rec = ARGV[4], cjson.decode(ARGV[5])
  if not get(id) then
    admit()
    local place = redis.call('ZCARD', Q) == 0 and choose(rec)
    if place then
      grant(id, rec, place)
    else
      rec.s = 'i'
      put(id, rec)
      redis.call('RPUSH', IDLE, id)
    end
    lease(id)
  end
  finish()
  return state(id)
elseif op == 'leave' then
  -- ARGV 4… ids: tickets released or withdrawn
  for i = 4, #ARGV do
    local rec = get(ARGV[i])
    if rec then drop(ARGV[i], rec) end
  end
  admit()
  finish()
  return 1
elseif op == 'reroute' then
  -- ARGV 4 id, 5 its candidates now (without the places it failed on, while others serve it): its slot given back,
  -- one elsewhere now, or first in the queue
  local id = ARGV[4]
  local rec = get(id)
  if rec then
    free(id, rec)
    rec.c = cjson.decode(ARGV[5])
    local place = choose(rec)
    if place then grant(id, rec, place) else enqueue(id, rec, true) end
  end
  admit()
  finish()
  return state(id)
elseif op == 'recand' then
  -- ARGV 4… pairs of id and candidates: the places changed in the view of the tickets' process
  for i = 4, #ARGV, 2 do
    local rec = get(ARGV[i])
    if rec and rec.s ~= 'r' then
      local candidates = cjson.decode(ARGV[i + 1])
      if rec.s == 'w' then
        for _, c in ipairs(rec.c) do add(WF, c[1], -1) end
        for _, c in ipairs(candidates) do redis.call('HINCRBY', WF, c[1], 1) end
        queue_changed = true
      end
      rec.c = candidates
      put(ARGV[i], rec)
    end
  end
  admit()
  finish()
  return 1
elseif op == 'renew' then
  -- ARGV 4 the process's slots per place (JSON), 5… its ticket ids: leases renewed, each one's state returned
  for place, slots in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', CAP, place, slots) end
  for i = 5, #ARGV do
    if redis.call('HEXISTS', T, ARGV[i]) == 1 then lease(ARGV[i]) end
  end
  admit()
  finish()
  local states = {}
  for i = 5, #ARGV do states[#states + 1] = state(ARGV[i]) end
  return states
elseif op == 'rejoin' then
  -- ARGV 4… pairs of id and record: tickets Redis lost (it restarted, or their leases ran out while their process
  -- was cut off) though their process still has them. Running ones count again, even past the slots: they run.
  for i = 4, #ARGV, 2 do
    local id = ARGV[i]
    if redis.call('HEXISTS', T, id) == 0 then
      local rec = cjson.decode(ARGV[i + 1])
      if rec.s == 'r' then
        put(id, rec)
        redis.call('HINCRBY', RUN, rec.p, 1)
        redis.call('HINCRBY', RU, rec.u, 1)
        if rec.b == 1 then redis.call('SADD', BG, id) end
      elseif rec.s == 'i' then
        put(id, rec)
        redis.call('RPUSH', IDLE, id)
      else
        enqueue(id, rec, false)
      end
      lease(id)
    end
  end
  admit()
  finish()
  local states = {}
  for i = 4, #ARGV, 2 do states[#states + 1] = state(ARGV[i]) end
  return states
end
return redis.error_reply('unknown admission operation')
