"""Lua scripts, registered once per client and shared by sync and async code.

Scripts make multi-key writes atomic on standalone and cluster alike (a cluster
pipeline cannot be a transaction). All keys of a checkpoint thread share its
``{thread}`` hash tag, so every script runs on one shard.

``KEYS`` (slot-migration safety: a cluster node checks a script's declared keys against
the slot's migration state and answers ASK/TRYAGAIN instead of running the script
against a half-migrated thread; keys a script only derives are not checked):

* one-namespace scripts (``put``, ``put_writes``, ``get``, ``list`` of one namespace,
  ``history``) get the thread's ``P:{T}:ns`` first, then exactly the keys of
  :meth:`CheckpointKeys.script_keys` they touch (``declared`` names them by suffix;
  without a TTL ``put`` needs 5, ``put_writes`` 3: every key is one more argument to
  pack on the hot path). Every key they touch is declared, except the other
  namespaces' keys the throttled TTL refresh extends (at most once per ttl/10; only
  with a TTL).
* thread-wide scripts (``delete_thread``, ``delete_runs``, ``prune``, ``dump``,
  ``load``, ``list`` of all namespaces) get :meth:`CheckpointKeys.thread_keys` and
  derive the keys of the namespaces they find in ``P:{T}:ns`` (no client could name
  them without a read first). They are O(size of the thread) and block the shard
  while they run: admin operations, not the hot path. ``put``, ``put_writes`` and
  ``get`` are O(channels + writes of one checkpoint) (plus O(namespaces) once per
  ttl/10 with a TTL); ``list`` is O(namespaces x page); ``history`` O(ancestors walked).

Arguments are plain ``ARGV`` entries. Measured on the hot path: what made valkey-py's
packing slow was ``str`` arguments (each one encoded per call), so keys and fields are
sent as ``bytes`` built once; framing all arguments into one (parsed in Lua) saved the
client ~3 us per ``put`` but cost the server ~8 us, so it is not done. (The server's
``cmsgpack`` cannot decode msgpack's binary type, so it cannot carry the blobs.)
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["CHECKPOINT_SCRIPTS", "SINGLE_FLIGHT_SCRIPTS", "ScriptRegistry"]

# Shared helpers, prepended to every checkpoint script. KEYS[1] is always the thread's
# namespace set ``P:{T}:ns``; thread-wide scripts get its run index and refresh marker
# as KEYS[2] and KEYS[3].
_PRELUDE = r"""
local NSK = {'i', 'c', 'b', 'w', 'd'}
local base = string.sub(KEYS[1], 1, -3)
local function nskey(kind, ns) return base .. kind .. ':' .. ns end
-- the keys of a namespace the script discovered (not declared)
local function nskeys(ns)
  return {i = nskey('i', ns), c = nskey('c', ns), b = nskey('b', ns),
          w = nskey('w', ns), d = nskey('d', ns)}
end
-- the declared keys, named by what follows the thread base: ns, runs, t or a kind letter
local function declared()
  local ks = {ns = KEYS[1]}
  for j = 2, #KEYS do
    local rest = string.sub(KEYS[j], #base + 1)
    if rest == 'runs' or rest == 't' then ks[rest] = KEYS[j]
    else ks[string.sub(rest, 1, 1)] = KEYS[j] end
  end
  return ks
end
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
-- namespace just used (ks) are refreshed on every call; all namespaces (a graph that
-- fans out to subgraphs makes many) at most every ttl/10, so the cost stays bounded
-- while no key of an active thread can expire.
-- tk: declared() with ns, runs, t (and, when one is set, the namespace's five keys)
local function touch(ttl, tk, ks)
  if ttl <= 0 then return end
  redis.call('PEXPIRE', tk.ns, ttl)
  redis.call('PEXPIRE', tk.runs, ttl)
  if ks then
    for _, k in ipairs(NSK) do redis.call('PEXPIRE', ks[k], ttl) end
  end
  if redis.call('SET', tk.t, '1', 'NX', 'PX', math.max(1, math.floor(ttl / 10))) then
    for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
      for _, k in ipairs(NSK) do redis.call('PEXPIRE', nskey(k, n), ttl) end
    end
  end
end
local function load_tuple(ks, ns, id, rec)
  local _, _, fields = header(rec)
  local blobs = hmget(ks.b, fields)
  local writes = hmget(ks.w, split(redis.call('HGET', ks.d, id), ','))
  -- false (missing) cannot travel inside a reply array reliably: use ''
  for i = 1, #fields do if not blobs[i] then blobs[i] = '' end end
  return {ns, id, rec, blobs, writes}
end
local function delete_checkpoint(ks, id)
  redis.call('ZREM', ks.i, id)
  redis.call('HDEL', ks.c, id)
  hdel(ks.w, split(redis.call('HGET', ks.d, id), ','))
  redis.call('HDEL', ks.d, id)
end
-- drop blobs no remaining checkpoint of the namespace refers to; forget empty namespaces
local function gc_namespace(ns, ks)
  local ids = redis.call('ZRANGE', ks.i, 0, -1)
  if #ids == 0 then
    for _, k in ipairs(NSK) do redis.call('DEL', ks[k]) end
    redis.call('SREM', KEYS[1], ns)
    return
  end
  local used = {}
  for _, rec in ipairs(hmget(ks.c, ids)) do
    if rec then
      local _, _, fields = header(rec)
      for _, f in ipairs(fields) do used[f] = true end
    end
  end
  local drop = {}
  for _, f in ipairs(redis.call('HKEYS', ks.b)) do
    if not used[f] then drop[#drop + 1] = f end
  end
  hdel(ks.b, drop)
end
-- run index member: run,ns,id
local function run_range(run) return '[' .. run .. ',', '(' .. run .. '-' end
-- keep the run index in step with the checkpoints that still exist
local function gc_runs()
  local drop = {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local p = split(m, ',')
    if redis.call('HEXISTS', nskey('c', p[2]), p[3]) == 0 then drop[#drop + 1] = m end
  end
  for i = 1, #drop, 500 do
    redis.call('ZREM', KEYS[2], unpack(drop, i, math.min(i + 499, #drop)))
  end
end
local function delete_thread()
  for _, ns in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    for _, k in ipairs(NSK) do redis.call('DEL', nskey(k, ns)) end
  end
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
end
"""

# ARGV: id, record, run, ttl_ms, ns, then blob field/value pairs.
# Order matters: blobs, record, then the index entry, so even a script error
# part-way (scripts are not rolled back) never leaves a checkpoint without its blobs.
_PUT = r"""
local id, rec, run, ttl, ns = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local ks = declared()
for k = 6, #ARGV, 1000 do
  redis.call('HSET', ks.b, unpack(ARGV, k, math.min(k + 999, #ARGV)))
end
-- a new checkpoint of a run joins the run index (before its record: see above)
if run ~= '' and redis.call('HEXISTS', ks.c, id) == 0 then
  redis.call('ZADD', ks.runs, 0, run .. ',' .. ns .. ',' .. id)
end
redis.call('SADD', KEYS[1], ns)
redis.call('HSET', ks.c, id, rec)
-- the index entry is the commit point: "latest" and listings only see complete records
redis.call('ZADD', ks.i, 0, id)
touch(ttl, ks, ks)
return 1
"""

# ARGV: id, ttl_ms, ns, then field, value, overwrite ('0'/'1') triples
_PUT_WRITES = r"""
local id, ttl, ns = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ks = declared()
local added = {}
for k = 4, #ARGV, 3 do
  local cmd = (ARGV[k + 2] == '1') and 'HSET' or 'HSETNX'
  if redis.call(cmd, ks.w, ARGV[k], ARGV[k + 1]) == 1 then added[#added + 1] = ARGV[k] end
end
if #added > 0 then
  local cur = redis.call('HGET', ks.d, id)
  local joined = table.concat(added, ',')
  redis.call('HSET', ks.d, id, (cur and cur ~= '') and (cur .. ',' .. joined) or joined)
  redis.call('SADD', KEYS[1], ns)
end
touch(ttl, ks, ks)
return #added
"""

# ARGV: ns, id ('' = latest), refresh_ttl_ms
_GET = r"""
local ns, id, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ks = declared()
if id == '' then
  local top = redis.call('ZREVRANGEBYLEX', ks.i, '+', '-', 'LIMIT', 0, 1)
  if #top == 0 then return false end
  id = top[1]
end
local rec = redis.call('HGET', ks.c, id)
if not rec then return false end
touch(ttl, ks, ks)
return load_tuple(ks, ns, id, rec)
"""

# ARGV: one_ns ('1'/'0'), ns, before ('' = none), limit, refresh_ttl_ms
# KEYS: script_keys (one namespace) or thread_keys (all namespaces).
# Returns {tuples, cursor}: cursor is the last candidate id when more may follow.
_LIST = r"""
local one, ns, before = ARGV[1], ARGV[2], ARGV[3]
local limit, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local nss = (one == '1') and {ns} or redis.call('SMEMBERS', KEYS[1])
local max = (before == '') and '+' or ('(' .. before)
local cands, kss, tk = {}, {}, declared()
for _, n in ipairs(nss) do
  kss[n] = (one == '1') and tk or nskeys(n)
  for _, id in ipairs(redis.call('ZREVRANGEBYLEX', kss[n].i, max, '-', 'LIMIT', 0, limit)) do
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
  local rec = redis.call('HGET', kss[n].c, id)
  if rec then out[#out + 1] = load_tuple(kss[n], n, id, rec) end
end
if #out > 0 then touch(ttl, tk) end
local cursor = (#cands >= limit) and cands[limit][1] or ''
return {out, cursor}
"""

_DELETE_THREAD = r"""
delete_thread()
return 1
"""

# ARGV: encoded run ids
_DELETE_RUNS = r"""
local touched, n = {}, 0
for k = 1, #ARGV do
  local lo, hi = run_range(ARGV[k])
  for _, m in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], lo, hi)) do
    local p = split(m, ',')
    delete_checkpoint(nskeys(p[2]), p[3])
    touched[p[2]] = true
    n = n + 1
  end
  redis.call('ZREMRANGEBYLEX', KEYS[2], lo, hi)
end
for ns, _ in pairs(touched) do gc_namespace(ns, nskeys(ns)) end
return n
"""

# ARGV: strategy
# keep_latest keeps, per namespace, the latest checkpoint and every ancestor up to the
# nearest one holding a stored blob for each delta channel (named in the latest
# record's header) that the latest lacks: DeltaChannel state stays reconstructible.
_PRUNE = r"""
local strategy = ARGV[1]
if strategy == 'delete' then delete_thread(); return 1 end
local function chan(f) return string.sub(f, 1, string.find(f, ':', 1, true) - 1) end
for _, ns in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local ks = nskeys(ns)
  local top = redis.call('ZREVRANGEBYLEX', ks.i, '+', '-', 'LIMIT', 0, 1)
  if #top > 0 then
    local keep, remaining, cursor = {}, nil, top[1]
    while cursor and cursor ~= '' do
      local rec = redis.call('HGET', ks.c, cursor)
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
        if remaining[chan(f)] and redis.call('HEXISTS', ks.b, f) == 1 then remaining[chan(f)] = nil end
      end
      if next(remaining) == nil then break end
      cursor = parent
    end
    for _, id in ipairs(redis.call('ZRANGE', ks.i, 0, -1)) do
      if not keep[id] then delete_checkpoint(ks, id) end
    end
  end
  gc_namespace(ns, ks)
end
gc_runs()
return 1
"""

# Returns the whole thread as one msgpack document.
_DUMP = r"""
local out = {redis.call('ZRANGE', KEYS[2], 0, -1)}
for _, ns in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local ks = nskeys(ns)
  out[#out + 1] = {
    ns,
    redis.call('ZRANGE', ks.i, 0, -1),
    redis.call('HGETALL', ks.c),
    redis.call('HGETALL', ks.b),
    redis.call('HGETALL', ks.w),
    redis.call('HGETALL', ks.d),
  }
end
return cmsgpack.pack(out)
"""

# ARGV: dump, ttl_ms. Merges a dumped thread into this thread.
_LOAD = r"""
local ttl, tk = tonumber(ARGV[2]), declared()
local data = cmsgpack.unpack(ARGV[1])
local function hset_flat(key, flat)
  for i = 1, #flat, 1000 do redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat))) end
end
local runs = data[1]
for i = 1, #runs, 500 do
  local args = {}
  for j = i, math.min(i + 499, #runs) do args[#args + 1] = 0; args[#args + 1] = runs[j] end
  redis.call('ZADD', KEYS[2], unpack(args))
end
for j = 2, #data do
  local d = data[j]
  local ns = d[1]
  local ks = nskeys(ns)
  redis.call('SADD', KEYS[1], ns)
  for _, id in ipairs(d[2]) do redis.call('ZADD', ks.i, 0, id) end
  hset_flat(ks.c, d[3])
  hset_flat(ks.b, d[4])
  hset_flat(ks.w, d[5])
  hset_flat(ks.d, d[6])
  touch(ttl, tk, ks)
end
touch(ttl, tk)
return #data - 1
"""

# ARGV: id ('' = latest), encoded channel names...
# Walks the parent chain of the target from its parent; returns per ancestor
# {id, record, blobs (only requested, still-unseeded channels; '' if none), writes}
# until every requested channel found a stored blob.
_HISTORY = r"""
local id = ARGV[1]
local ks = declared()
if id == '' then
  local top = redis.call('ZREVRANGEBYLEX', ks.i, '+', '-', 'LIMIT', 0, 1)
  if #top == 0 then return {} end
  id = top[1]
end
local rec = redis.call('HGET', ks.c, id)
if not rec then return {} end
local remaining, left = {}, 0
for k = 2, #ARGV do remaining[ARGV[k]] = true; left = left + 1 end
local out = {}
local cursor = header(rec)
while cursor and cursor ~= '' and left > 0 do
  local r = redis.call('HGET', ks.c, cursor)
  if not r then break end
  local parent, _, fields = header(r)
  local blobs = {}
  for i, f in ipairs(fields) do
    local ch = string.sub(f, 1, string.find(f, ':', 1, true) - 1)
    local v = false
    if remaining[ch] then v = redis.call('HGET', ks.b, f) end
    blobs[i] = v or ''
  end
  out[#out + 1] = {cursor, r, blobs, hmget(ks.w, split(redis.call('HGET', ks.d, cursor), ','))}
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
