"""Lua scripts of the store (one namespace's keys per call: one cluster slot).

Key names follow :class:`langgraph_valkey_cache._keys.StoreKeys`: the caller passes the
item key (``KEYS[1]``) or a namespace's zset key, and the bases the scripts append
``K`` / ``K:j`` to. Times come from the server's ``TIME`` so every client agrees.
"""

from __future__ import annotations

__all__ = ["STORE_SCRIPTS"]

_PRELUDE = r"""
local function now()
  local t = redis.call('TIME')
  local us = t[1] .. string.format('%06d', tonumber(t[2]))
  return us, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- forget index entries of items that expired (Valkey already deleted the items)
local function prune(ukey, xkey, now_ms)
  while true do
    local dead = redis.call('ZRANGEBYSCORE', xkey, '-inf', '(' .. now_ms, 'LIMIT', 0, 500)
    if #dead == 0 then return end
    redis.call('ZREM', xkey, unpack(dead))
    redis.call('ZREM', ukey, unpack(dead))
    if #dead < 500 then return end
  end
end
-- vector doc base of space vs (see StoreKeys.vector_parts)
local function vbase(vpre, vs, vpost)
  if vs and vs ~= '' then return vpre .. '-' .. vs .. vpost end
  return vpre .. vpost
end
local function drop_vectors(item, vpre, vpost, k)
  local old = redis.call('HMGET', item, 'nv', 'vs')
  local base = vbase(vpre, old[2], vpost)
  for j = 0, tonumber(old[1] or '0') - 1 do redis.call('DEL', base .. k .. ':' .. j) end
end
"""

# KEYS: item. ARGV: vpre, vpost, space, ukey, xkey, K, value, ttl_ms, nv, nf,
# then nf field/value pairs (vector docs), then nv blobs.
# Returns {created_us, updated_us, new_namespace (1/0)}.
_PUT = r"""
local item, vpre, vpost, space = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local ukey, xkey, k = ARGV[4], ARGV[5], ARGV[6]
local ttl, nv, nf = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local us, now_ms = now()
prune(ukey, xkey, now_ms)
local fresh = (redis.call('ZCARD', xkey) == 0) and 1 or 0
local created = redis.call('HGET', item, 'c') or us
drop_vectors(item, vpre, vpost, k)
redis.call('DEL', item)
redis.call('HSET', item, 'v', ARGV[7], 'c', created, 'u', us, 't', ARGV[8])
redis.call('HSET', item, 'nv', ARGV[9], 'vs', space)
local shared = {}
for i = 11, 10 + 2 * nf do shared[#shared + 1] = ARGV[i] end
local vb = vbase(vpre, space, vpost)
local it = nv > 0 and (created .. ' ' .. us .. ' ' .. ARGV[8] .. ' ' .. ARGV[7]) or ''
for j = 0, nv - 1 do
  local vk = vb .. k .. ':' .. j
  -- the item too (one field), so a KNN returns whole items in its one reply
  redis.call('HSET', vk, 'vec', ARGV[11 + 2 * nf + j], 'it', it, unpack(shared))
  if ttl > 0 then redis.call('PEXPIRE', vk, ttl) end
end
if ttl > 0 then
  redis.call('PEXPIRE', item, ttl)
  redis.call('ZADD', xkey, now_ms + ttl, k)
else
  redis.call('ZADD', xkey, '+inf', k)
end
redis.call('ZADD', ukey, us, k)
return {created, us, fresh}
"""

# KEYS: item. ARGV: vpre, vpost, ukey, xkey, K. Returns how many live items remain.
_DELETE = r"""
local item, vpre, vpost, ukey, xkey, k = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local _, now_ms = now()
drop_vectors(item, vpre, vpost, k)
redis.call('DEL', item)
redis.call('ZREM', ukey, k)
redis.call('ZREM', xkey, k)
prune(ukey, xkey, now_ms)
return redis.call('ZCARD', xkey)
"""

# Items of one namespace. KEYS: any key of it (routing). ARGV: ibase, vpre, vpost, xkey,
# then K/refresh (1/0) pairs. Returns one {v, c, u, t, nv, vs} per K, or 0 when absent.
_MGET = r"""
local ib, vpre, vpost, xkey = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out, now_ms = {}, nil
for a = 5, #ARGV, 2 do
  local k = ARGV[a]
  local r = redis.call('HMGET', ib .. k, 'v', 'c', 'u', 't', 'nv', 'vs')
  if not r[1] then
    out[#out + 1] = 0
  else
    local ttl = tonumber(r[4])
    if ARGV[a + 1] == '1' and ttl > 0 then
      if not now_ms then now_ms = select(2, now()) end
      redis.call('PEXPIRE', ib .. k, ttl)
      local vb = vbase(vpre, r[6], vpost)
      for j = 0, tonumber(r[5]) - 1 do redis.call('PEXPIRE', vb .. k .. ':' .. j, ttl) end
      redis.call('ZADD', xkey, 'XX', now_ms + ttl, k)
    end
    out[#out + 1] = {r[1], r[2], r[3], r[4], r[5], r[6] or ''}
  end
end
return out
"""

# KEYS: ukey. ARGV: ibase, vpre, vpost, xkey, count (0 = all), with_vectors (1/0).
# Returns {rows, seen, last}: rows {K, v, c, u, t, nv, vs, vec...} most recently updated
# first; seen = index entries read (seen == count: more may follow, none newer than last).
_LIST = r"""
local ukey, ib, vpre, vpost, xkey = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local count, with_vec = tonumber(ARGV[5]), ARGV[6] == '1'
local _, now_ms = now()
prune(ukey, xkey, now_ms)
local ks = redis.call('ZREVRANGE', ukey, 0, count - 1, 'WITHSCORES')
local out = {}
for i = 1, #ks, 2 do
  local k = ks[i]
  local r = redis.call('HMGET', ib .. k, 'v', 'c', 'u', 't', 'nv', 'vs')
  if r[1] then
    local row = {k, r[1], r[2], r[3], r[4], r[5], r[6] or ''}
    if with_vec then
      local vb = vbase(vpre, r[6], vpost)
      for j = 0, tonumber(r[5]) - 1 do
        row[#row + 1] = redis.call('HGET', vb .. k .. ':' .. j, 'vec') or ''
      end
    end
    out[#out + 1] = row
  end
end
return {out, #ks / 2, ks[#ks] or '0'}
"""

# KEYS: xkey. ARGV: ukey. Returns the number of live items of the namespace.
_ALIVE = r"""
local _, now_ms = now()
prune(ARGV[1], KEYS[1], now_ms)
return redis.call('ZCARD', KEYS[1])
"""

STORE_SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in {
        "put": _PUT,
        "delete": _DELETE,
        "mget": _MGET,
        "list": _LIST,
        "alive": _ALIVE,
    }.items()
}
