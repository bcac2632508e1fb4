"""Lua scripts, registered once per client and shared by sync and async code.

Scripts make multi-key writes atomic on standalone and cluster alike (a cluster
pipeline cannot be a transaction). Each checkpoint script gets the thread's marker
key as ``KEYS[1]`` (for routing) and touches only keys with the same ``{thread}``
hash tag, whose names it derives from the thread base ``P:{T}:`` exactly as
:class:`langgraph_valkey_cache._keys.CheckpointKeys` documents.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["CHECKPOINT_SCRIPTS", "SINGLE_FLIGHT_SCRIPTS", "ScriptRegistry"]

# Shared helpers, prepended to every checkpoint script.
_PRELUDE = r"""
local NSK = {'i', 'c', 'b', 'w', 'd'}
local function nskey(base, kind, ns) return base .. kind .. ':' .. ns end
local function split(s, sep)
  local out = {}
  if not s or s == '' then return out end
  local start = 1
  while true do
    local i = string.find(s, sep, start, true)
    if not i then out[#out + 1] = string.sub(s, start); return out end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + #sep
  end
end
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, 500 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 499, #fields)))
    for _, v in ipairs(part) do out[#out + 1] = v end
  end
  return out
end
local function hdel(key, fields)
  for i = 1, #fields, 500 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 499, #fields)))
  end
end
-- record = parent \t run \t blobfield,... \t deltachannel,... \n body
local function header(rec)
  local nl = string.find(rec, '\n', 1, true)
  local parts = split(string.sub(rec, 1, nl - 1), '\t')
  return parts[1], parts[2], split(parts[3], ','), split(parts[4], ',')
end
-- slide the expiry of every key of the thread together. The thread-level keys and the
-- namespace just used are refreshed on every call; all namespaces (a graph that fans
-- out to subgraphs makes many) at most every ttl/10, so the cost stays bounded while
-- no key of an active thread can expire.
local function touch(base, ttl, ns)
  if ttl <= 0 then return end
  redis.call('PEXPIRE', base .. 'ns', ttl)
  redis.call('PEXPIRE', base .. 'runs', ttl)
  if ns then
    for _, k in ipairs(NSK) do redis.call('PEXPIRE', nskey(base, k, ns), ttl) end
  end
  if redis.call('SET', base .. 't', '1', 'NX', 'PX', math.max(1, math.floor(ttl / 10))) then
    for _, n in ipairs(redis.call('SMEMBERS', base .. 'ns')) do
      for _, k in ipairs(NSK) do redis.call('PEXPIRE', nskey(base, k, n), ttl) end
    end
  end
end
local function load_tuple(base, ns, id, rec)
  local _, _, fields = header(rec)
  local blobs = hmget(nskey(base, 'b', ns), fields)
  local wf = split(redis.call('HGET', nskey(base, 'd', ns), id), ',')
  local writes = hmget(nskey(base, 'w', ns), wf)
  -- false (missing) cannot travel inside a reply array reliably: use ''
  for i = 1, #fields do if not blobs[i] then blobs[i] = '' end end
  return {ns, id, rec, blobs, writes}
end
local function delete_checkpoint(base, ns, id)
  redis.call('ZREM', nskey(base, 'i', ns), id)
  redis.call('HDEL', nskey(base, 'c', ns), id)
  local wf = split(redis.call('HGET', nskey(base, 'd', ns), id), ',')
  hdel(nskey(base, 'w', ns), wf)
  redis.call('HDEL', nskey(base, 'd', ns), id)
end
-- drop blobs no remaining checkpoint of the namespace refers to; forget empty namespaces
local function gc_namespace(base, ns)
  local ids = redis.call('ZRANGE', nskey(base, 'i', ns), 0, -1)
  if #ids == 0 then
    for _, k in ipairs(NSK) do redis.call('DEL', nskey(base, k, ns)) end
    redis.call('SREM', base .. 'ns', ns)
    return
  end
  local used = {}
  for _, id in ipairs(ids) do
    local rec = redis.call('HGET', nskey(base, 'c', ns), id)
    if rec then
      local _, _, fields = header(rec)
      for _, f in ipairs(fields) do used[f] = true end
    end
  end
  local drop = {}
  for _, f in ipairs(redis.call('HKEYS', nskey(base, 'b', ns))) do
    if not used[f] then drop[#drop + 1] = f end
  end
  hdel(nskey(base, 'b', ns), drop)
end
-- keep the run index in step with the checkpoints that still exist
local function gc_runs(base)
  local flat = redis.call('HGETALL', base .. 'runs')
  for i = 1, #flat, 2 do
    local kept = {}
    for _, entry in ipairs(split(flat[i + 1], ',')) do
      local slash = string.find(entry, '/', 1, true)
      local ns, id = string.sub(entry, 1, slash - 1), string.sub(entry, slash + 1)
      if redis.call('HEXISTS', nskey(base, 'c', ns), id) == 1 then kept[#kept + 1] = entry end
    end
    if #kept == 0 then redis.call('HDEL', base .. 'runs', flat[i])
    else redis.call('HSET', base .. 'runs', flat[i], table.concat(kept, ',')) end
  end
end
local function delete_thread(base)
  for _, ns in ipairs(redis.call('SMEMBERS', base .. 'ns')) do
    for _, k in ipairs(NSK) do redis.call('DEL', nskey(base, k, ns)) end
  end
  redis.call('DEL', base .. 'ns', base .. 'runs', base .. 't')
end
"""

# ARGV: base, ns, id, record, run, ttl_ms, then blob field/value pairs.
# Order matters: blobs, record, then the index entry, so even a script error
# part-way (scripts are not rolled back) never leaves a checkpoint without its blobs.
_PUT = r"""
local base, ns, id, rec, run, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
for k = 7, #ARGV, 1000 do
  redis.call('HSET', nskey(base, 'b', ns), unpack(ARGV, k, math.min(k + 999, #ARGV)))
end
local ckey = nskey(base, 'c', ns)
local created = 1 - redis.call('HEXISTS', ckey, id)
if run ~= '' and created == 1 then
  local cur = redis.call('HGET', base .. 'runs', run)
  local entry = ns .. '/' .. id
  redis.call('HSET', base .. 'runs', run, cur and (cur .. ',' .. entry) or entry)
end
redis.call('SADD', base .. 'ns', ns)
redis.call('HSET', ckey, id, rec)
-- the index entry is the commit point: "latest" and listings only see complete records
redis.call('ZADD', nskey(base, 'i', ns), 0, id)
touch(base, ttl, ns)
return created
"""

# ARGV: base, ns, id, ttl_ms, then field/value/overwrite triples
_PUT_WRITES = r"""
local base, ns, id, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local wkey = nskey(base, 'w', ns)
local added = {}
for k = 5, #ARGV, 3 do
  local cmd = (ARGV[k + 2] == '1') and 'HSET' or 'HSETNX'
  if redis.call(cmd, wkey, ARGV[k], ARGV[k + 1]) == 1 then added[#added + 1] = ARGV[k] end
end
if #added > 0 then
  local dkey = nskey(base, 'd', ns)
  local cur = redis.call('HGET', dkey, id)
  local joined = table.concat(added, ',')
  redis.call('HSET', dkey, id, (cur and cur ~= '') and (cur .. ',' .. joined) or joined)
  redis.call('SADD', base .. 'ns', ns)
end
touch(base, ttl, ns)
return #added
"""

# ARGV: base, ns, id ('' = latest), refresh_ttl_ms
_GET = r"""
local base, ns, id, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if id == '' then
  local top = redis.call('ZREVRANGEBYLEX', nskey(base, 'i', ns), '+', '-', 'LIMIT', 0, 1)
  if #top == 0 then return false end
  id = top[1]
end
local rec = redis.call('HGET', nskey(base, 'c', ns), id)
if not rec then return false end
touch(base, ttl, ns)
return load_tuple(base, ns, id, rec)
"""

# ARGV: base, one_ns ('1'/'0'), ns, before ('' = none), limit, refresh_ttl_ms
# Returns {tuples, cursor}: cursor is the last candidate id when more may follow.
_LIST = r"""
local base, one, ns, before = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit, ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local nss = (one == '1') and {ns} or redis.call('SMEMBERS', base .. 'ns')
local max = (before == '') and '+' or ('(' .. before)
local cands = {}
for _, n in ipairs(nss) do
  for _, id in ipairs(redis.call('ZREVRANGEBYLEX', nskey(base, 'i', n), max, '-', 'LIMIT', 0, limit)) do
    cands[#cands + 1] = {id, n}
  end
end
table.sort(cands, function(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end)
local out = {}
for i = 1, math.min(limit, #cands) do
  local id, n = cands[i][1], cands[i][2]
  local rec = redis.call('HGET', nskey(base, 'c', n), id)
  if rec then out[#out + 1] = load_tuple(base, n, id, rec) end
end
if #out > 0 then touch(base, ttl) end
local cursor = (#cands >= limit) and cands[limit][1] or ''
return {out, cursor}
"""

_DELETE_THREAD = r"""
delete_thread(ARGV[1])
return 1
"""

# ARGV: base, run ids...
_DELETE_RUNS = r"""
local base = ARGV[1]
local touched, n = {}, 0
for k = 2, #ARGV do
  for _, entry in ipairs(split(redis.call('HGET', base .. 'runs', ARGV[k]), ',')) do
    local slash = string.find(entry, '/', 1, true)
    local ns, id = string.sub(entry, 1, slash - 1), string.sub(entry, slash + 1)
    delete_checkpoint(base, ns, id)
    touched[ns] = true
    n = n + 1
  end
  redis.call('HDEL', base .. 'runs', ARGV[k])
end
for ns, _ in pairs(touched) do gc_namespace(base, ns) end
return n
"""

# ARGV: base, strategy
# keep_latest keeps, per namespace, the latest checkpoint and every ancestor up to the
# nearest one holding a stored blob for each delta channel (named in the latest
# record's header) that the latest lacks: DeltaChannel state stays reconstructible.
_PRUNE = r"""
local base, strategy = ARGV[1], ARGV[2]
if strategy == 'delete' then delete_thread(base); return 1 end
local function chan(f) return string.sub(f, 1, string.find(f, ':', 1, true) - 1) end
for _, ns in ipairs(redis.call('SMEMBERS', base .. 'ns')) do
  local ckey, bkey = nskey(base, 'c', ns), nskey(base, 'b', ns)
  local top = redis.call('ZREVRANGEBYLEX', nskey(base, 'i', ns), '+', '-', 'LIMIT', 0, 1)
  if #top > 0 then
    local keep, remaining, cursor = {}, nil, top[1]
    while cursor and cursor ~= '' do
      local rec = redis.call('HGET', ckey, cursor)
      if not rec then break end
      keep[cursor] = true
      local parent, _, fields, deltas = header(rec)
      if remaining == nil then
        local delta = {}
        for _, ch in ipairs(deltas) do delta[ch] = true end
        remaining = {}
        for _, f in ipairs(fields) do if delta[chan(f)] then remaining[chan(f)] = true end end
      end
      for _, f in ipairs(fields) do
        if remaining[chan(f)] and redis.call('HEXISTS', bkey, f) == 1 then remaining[chan(f)] = nil end
      end
      if next(remaining) == nil then break end
      cursor = parent
    end
    for _, id in ipairs(redis.call('ZRANGE', nskey(base, 'i', ns), 0, -1)) do
      if not keep[id] then delete_checkpoint(base, ns, id) end
    end
  end
  gc_namespace(base, ns)
end
gc_runs(base)
return 1
"""

# ARGV: base. Returns the whole thread as one msgpack document.
_DUMP = r"""
local base = ARGV[1]
local out = {redis.call('HGETALL', base .. 'runs')}
for _, ns in ipairs(redis.call('SMEMBERS', base .. 'ns')) do
  out[#out + 1] = {
    ns,
    redis.call('ZRANGE', nskey(base, 'i', ns), 0, -1),
    redis.call('HGETALL', nskey(base, 'c', ns)),
    redis.call('HGETALL', nskey(base, 'b', ns)),
    redis.call('HGETALL', nskey(base, 'w', ns)),
    redis.call('HGETALL', nskey(base, 'd', ns)),
  }
end
return cmsgpack.pack(out)
"""

# ARGV: base, dump, ttl_ms. Merges a dumped thread into this thread.
_LOAD = r"""
local base, ttl = ARGV[1], tonumber(ARGV[3])
local data = cmsgpack.unpack(ARGV[2])
local function hset_flat(key, flat)
  for i = 1, #flat, 1000 do redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat))) end
end
local runs = data[1]
for i = 1, #runs, 2 do
  local cur = redis.call('HGET', base .. 'runs', runs[i])
  redis.call('HSET', base .. 'runs', runs[i], cur and (cur .. ',' .. runs[i + 1]) or runs[i + 1])
end
for j = 2, #data do
  local d = data[j]
  local ns = d[1]
  redis.call('SADD', base .. 'ns', ns)
  for _, id in ipairs(d[2]) do redis.call('ZADD', nskey(base, 'i', ns), 0, id) end
  hset_flat(nskey(base, 'c', ns), d[3])
  hset_flat(nskey(base, 'b', ns), d[4])
  hset_flat(nskey(base, 'w', ns), d[5])
  hset_flat(nskey(base, 'd', ns), d[6])
  touch(base, ttl, ns)
end
touch(base, ttl)
return #data - 1
"""

# ARGV: base, ns, id ('' = latest), encoded channel names...
# Walks the parent chain of the target from its parent; returns per ancestor
# {id, record, blobs (only requested, still-unseeded channels; '' if none), writes}
# until every requested channel found a stored blob.
_HISTORY = r"""
local base, ns, id = ARGV[1], ARGV[2], ARGV[3]
local ckey, bkey = nskey(base, 'c', ns), nskey(base, 'b', ns)
if id == '' then
  local top = redis.call('ZREVRANGEBYLEX', nskey(base, 'i', ns), '+', '-', 'LIMIT', 0, 1)
  if #top == 0 then return {} end
  id = top[1]
end
local rec = redis.call('HGET', ckey, id)
if not rec then return {} end
local remaining, left = {}, 0
for k = 4, #ARGV do remaining[ARGV[k]] = true; left = left + 1 end
local out = {}
local cursor = header(rec)
while cursor and cursor ~= '' and left > 0 do
  local r = redis.call('HGET', ckey, cursor)
  if not r then break end
  local parent, _, fields = header(r)
  local blobs = {}
  for i, f in ipairs(fields) do
    local ch = string.sub(f, 1, string.find(f, ':', 1, true) - 1)
    local v = false
    if remaining[ch] then v = redis.call('HGET', bkey, f) end
    blobs[i] = v or ''
  end
  local wf = split(redis.call('HGET', nskey(base, 'd', ns), cursor), ',')
  out[#out + 1] = {cursor, r, blobs, hmget(nskey(base, 'w', ns), wf)}
  for i, f in ipairs(fields) do
    local ch = string.sub(f, 1, string.find(f, ':', 1, true) - 1)
    if remaining[ch] and blobs[i] ~= '' then remaining[ch] = nil; left = left - 1 end
  end
  cursor = parent
end
return out
"""

CHECKPOINT_SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in {
        "put": _PUT,
        "put_writes": _PUT_WRITES,
        "get": _GET,
        "list": _LIST,
        "delete_thread": _DELETE_THREAD,
        "delete_runs": _DELETE_RUNS,
        "prune": _PRUNE,
        "dump": _DUMP,
        "load": _LOAD,
        "history": _HISTORY,
    }.items()
}


class ScriptRegistry:
    """Registers a set of scripts on a client once; sync and async clients alike.

    ``registry.bind(client)["put"](keys=[...], args=[...])`` returns the reply (sync
    client) or an awaitable of it (async client). valkey-py's ``Script`` sends
    ``EVALSHA`` and loads the source once on ``NOSCRIPT``.
    """

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources
        self._bound: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()

    def bind(self, client: Any) -> dict[str, Any]:
        found = self._bound.get(client)
        if found is None:
            found = {name: client.register_script(src) for name, src in self.sources.items()}
            self._bound[client] = found
        return found


# --- single-flight leases (cache/singleflight.py, cache/node.py) ----------------------

# KEYS: value, lease. ARGV: token, lease ms, uncacheable marker.
# Reply {1, value}: hit. {2, ''}: lease taken, caller leads. {0, ''}: someone else leads.
# {3, ''}: the last leader's result was not cacheable, compute without waiting.
_SF_GET_OR_LEASE = """
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
if redis.call('GET', KEYS[2]) == ARGV[3] then return {3, ''} end
return {0, ''}
"""
# KEYS: value, lease. ARGV: store flag, value, ttl ms ('' = none), token, marker, marker ms.
# Stores the value (flag 1); the holder's lease is deleted, or (flag 0) replaced by the
# uncacheable marker for a short while.
_SF_PUBLISH = """
if ARGV[1] == '1' then
  if ARGV[3] ~= '' then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[1], ARGV[2])
  end
end
if redis.call('GET', KEYS[2]) == ARGV[4] then
  if ARGV[1] == '1' then
    redis.call('DEL', KEYS[2])
  else
    redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
  end
end
return 1
"""
# KEYS: lease. ARGV: token, lease ms.
_SF_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# KEYS: lease. ARGV: token. Only the holder may delete its lease.
_SF_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SINGLE_FLIGHT_SCRIPTS = ScriptRegistry(
    {
        "get_or_lease": _SF_GET_OR_LEASE,
        "publish": _SF_PUBLISH,
        "acquire": _SF_ACQUIRE,
        "release": _SF_RELEASE,
    }
)
