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
  without a TTL or retention ``put`` needs 6 (7 with a metadata index), ``put_writes``
  3: every key is one more argument to pack on the hot path). Every key they touch is declared, except the other
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

__all__ = ["CHECKPOINT_SCRIPTS", "SINGLE_FLIGHT_SCRIPTS", "STORE_SCRIPTS", "ScriptRegistry"]

# Shared helpers, prepended to the checkpoint scripts in three layers, so a hot-path
# script does not define (a closure per helper, per call: measured ~3 us of a ~17 us
# put_writes) what it never calls. KEYS[1] is always the thread's namespace set
# ``P:{T}:ns``; thread-wide scripts get its run index and refresh marker as KEYS[2] and
# KEYS[3]. _CORE: keys, parsing, TTL refresh, reading a checkpoint.
_CORE = r"""
local NSK = {'i', 'c', 'b', 'w', 'd', 'e'}
local base = string.sub(KEYS[1], 1, -3)
local function nskey(kind, ns) return base .. kind .. ':' .. ns end
-- the keys of a namespace the script discovered (not declared)
local function nskeys(ns)
  return {i = nskey('i', ns), c = nskey('c', ns), b = nskey('b', ns),
          w = nskey('w', ns), d = nskey('d', ns), e = nskey('e', ns)}
end
-- the declared keys, named by what follows the thread base: ns, runs, t, x or a kind
-- letter (one character tells them apart: a string.sub per key, ~4 us less per put)
local KIND = {r = 'runs', t = 't', x = 'x'}
local function declared()
  local ks, at = {ns = KEYS[1]}, #base + 1
  for j = 2, #KEYS do
    local c = string.sub(KEYS[j], at, at)
    ks[KIND[c] or c] = KEYS[j]
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
-- record = parent \t run \t blobfield,... \t deltachannel,... [\t pair,...] \n body
-- (pairs: the indexed metadata entries; records written before the index have none)
local function header(rec)
  local nl = string.find(rec, '\n', 1, true)
  local parts = split(string.sub(rec, 1, nl - 1), '\t')
  return parts[1], parts[2], split(parts[3], ','), split(parts[4], ','), split(parts[5], ',')
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
  if tk.x then redis.call('PEXPIRE', tk.x, ttl) end
  if ks then
    for _, k in ipairs(NSK) do redis.call('PEXPIRE', ks[k], ttl) end
  end
  if redis.call('SET', tk.t, '1', 'NX', 'PX', math.max(1, math.floor(ttl / 10))) then
    for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
      for _, k in ipairs(NSK) do redis.call('PEXPIRE', nskey(k, n), ttl) end
    end
  end
end
-- a list stored item by item: 0x02 then the 16-byte digests of its items (P:{T}:e:<ns>)
local function item_refs(blob)
  local out = {}
  if blob and string.byte(blob, 1) == 2 then
    for i = 2, #blob, 16 do out[#out + 1] = string.sub(blob, i, i + 15) end
  end
  return out
end
-- per blob, the items of the list blobs ({} for the others). When every item is there
-- and stored raw (0x00 + its msgpack bytes: self-delimiting), one string of their bytes
-- joined: the client then parses one reply, not one per message (a long thread's
-- get_tuple spent ~2 us per item there); else the items one by one ('' when missing)
local function load_items(ks, blobs)
  local out = {}
  for i, blob in ipairs(blobs) do
    local refs = item_refs(blob)
    if #refs > 0 then
      local got = hmget(ks.e, refs)
      local raw = true
      for j = 1, #refs do
        local it = got[j]
        if not it then got[j] = ''; raw = false
        elseif string.byte(it, 1) ~= 0 then raw = false end
      end
      if raw then
        local parts = {}
        for j = 1, #refs do parts[j] = string.sub(got[j], 2) end
        out[i] = table.concat(parts)
      else
        out[i] = got
      end
    else
      out[i] = {}
    end
  end
  return out
end
local function load_tuple(ks, ns, id, rec)
  local _, _, fields = header(rec)
  local blobs = hmget(ks.b, fields)
  local writes = hmget(ks.w, split(redis.call('HGET', ks.d, id), ','))
  -- false (missing) cannot travel inside a reply array reliably: use ''
  for i = 1, #fields do if not blobs[i] then blobs[i] = '' end end
  return {ns, id, rec, blobs, writes, load_items(ks, blobs)}
end
"""

# _INDEX: the thread's own index bookkeeping (needs _CORE).
_INDEX = r"""
-- thread index bookkeeping (same slot): P:{T}:x counts, per indexed metadata pair, the
-- checkpoints carrying it; P:{T}:runs holds one member per checkpoint of a run. What
-- appears or disappears is reported to the client, which updates the global index.
local XKEY, RUNS = base .. 'x', base .. 'runs'
local function run_range(run) return '[' .. run .. ',', '(' .. run .. '-' end
local function run_left(run)
  local lo, hi = run_range(run)
  return #redis.call('ZRANGEBYLEX', RUNS, lo, hi, 'LIMIT', 0, 1) > 0
end
local function new_drops() return {prs = {}, runs = {}, n = 0} end
local function add_pairs(prs, fresh)
  for _, p in ipairs(prs) do
    if redis.call('HINCRBY', XKEY, p, 1) == 1 then fresh[#fresh + 1] = p end
  end
end
local function drop_pairs(prs, drops)
  for _, p in ipairs(prs) do
    if redis.call('HINCRBY', XKEY, p, -1) <= 0 then
      redis.call('HDEL', XKEY, p)
      drops.prs[p] = true
      drops.n = drops.n + 1
    end
  end
end
-- {gone, dropped pairs, runs no longer in the thread}
local function report(drops)
  local prs, runs = {}, {}
  for p, _ in pairs(drops.prs) do prs[#prs + 1] = p end
  for r, _ in pairs(drops.runs) do runs[#runs + 1] = r end
  return {redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0, prs, runs}
end
"""

# _ADMIN: deleting, collecting, retention (needs _CORE and _INDEX).
_ADMIN = r"""
-- P:{T}:e:<ns> field GEN (never a 16-byte digest) holds the items' generation: a
-- token the put that first stored items there chose. Whatever drops items drops GEN
-- too, so a client that saw generation g holds a still-true list of stored items for
-- as long as GEN is g (put checks one field, not every item it left out).
local GEN = 'g'
-- drop the items of `candidates` (digest set) that no list blob in `blobs` refers to
local function gc_items(ks, candidates, blobs)
  candidates[GEN] = nil
  if next(candidates) == nil then return end
  for _, blob in ipairs(blobs) do
    for _, r in ipairs(item_refs(blob)) do candidates[r] = nil end
  end
  local drop = {}
  for r, _ in pairs(candidates) do drop[#drop + 1] = r end
  if #drop > 0 then drop[#drop + 1] = GEN end
  hdel(ks.e, drop)
end
-- returns the deleted record's blob fields
local function delete_checkpoint(ks, ns, id, drops)
  local fields = {}
  redis.call('ZREM', ks.i, id)
  local rec = redis.call('HGET', ks.c, id)
  if rec then
    local _, run, fs, _, prs = header(rec)
    fields = fs
    if run ~= '' then
      redis.call('ZREM', RUNS, run .. ',' .. ns .. ',' .. id)
      if not run_left(run) and not drops.runs[run] then
        drops.runs[run] = true
        drops.n = drops.n + 1
      end
    end
    drop_pairs(prs, drops)
    redis.call('HDEL', ks.c, id)
  end
  hdel(ks.w, split(redis.call('HGET', ks.d, id), ','))
  redis.call('HDEL', ks.d, id)
  return fields
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
  if redis.call('EXISTS', ks.e) == 1 then
    local all = {}
    for _, r in ipairs(redis.call('HKEYS', ks.e)) do all[r] = true end
    gc_items(ks, all, redis.call('HVALS', ks.b))
  end
end
-- run index member: run,ns,id
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
  local drops = new_drops()
  for _, p in ipairs(redis.call('HKEYS', XKEY)) do drops.prs[p] = true end
  for _, m in ipairs(redis.call('ZRANGE', RUNS, 0, -1)) do
    drops.runs[string.sub(m, 1, string.find(m, ',', 1, true) - 1)] = true
  end
  for _, ns in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    for _, k in ipairs(NSK) do redis.call('DEL', nskey(k, ns)) end
  end
  redis.call('DEL', KEYS[1], RUNS, base .. 't', XKEY)
  return drops
end
local function chan(f) return string.sub(f, 1, string.find(f, ':', 1, true) - 1) end
-- mark in keep the ancestors (from cursor on) a delta channel in remaining still needs:
-- up to the nearest one holding a stored blob of it. Adds their blob fields to used.
local function keep_delta_ancestors(ks, cursor, remaining, keep, used)
  while cursor and cursor ~= '' and next(remaining) ~= nil do
    local rec = redis.call('HGET', ks.c, cursor)
    if not rec then return end
    keep[cursor] = true
    local parent, _, fields = header(rec)
    for _, f in ipairs(fields) do
      used[f] = true
      if remaining[chan(f)] and redis.call('HEXISTS', ks.b, f) == 1 then
        remaining[chan(f)] = nil
      end
    end
    cursor = parent
  end
end
-- retention: keep the newest `limit` checkpoints of a namespace plus the ancestors
-- their delta channels need; delete the others and the blobs only they used.
-- O(limit x channels) per call: HMGET of the retained records' headers.
local function retain(ks, ns, limit, drops)
  local ids = redis.call('ZREVRANGEBYLEX', ks.i, '+', '-')
  if #ids <= limit then return end
  local keep, used, kept_ids = {}, {}, {}
  for i = 1, limit do keep[ids[i]] = true; kept_ids[i] = ids[i] end
  local recs = hmget(ks.c, kept_ids)
  local want, roots = {}, {}
  for _, rec in ipairs(recs) do
    if rec then
      local parent, _, fields, deltas = header(rec)
      for _, f in ipairs(fields) do used[f] = true end
      for _, ch in ipairs(deltas) do want[ch] = true end
      if parent ~= '' and not keep[parent] then roots[#roots + 1] = {parent, fields} end
    end
  end
  if next(want) ~= nil then
    for _, root in ipairs(roots) do
      -- what the retained child of this ancestor still lacks
      local remaining = {}
      for ch, _ in pairs(want) do remaining[ch] = true end
      for _, f in ipairs(root[2]) do
        if remaining[chan(f)] and redis.call('HEXISTS', ks.b, f) == 1 then
          remaining[chan(f)] = nil
        end
      end
      keep_delta_ancestors(ks, root[1], remaining, keep, used)
    end
  end
  local drop = {}
  for i = limit + 1, #ids do
    if not keep[ids[i]] then
      for _, f in ipairs(delete_checkpoint(ks, ns, ids[i], drops)) do
        if not used[f] then used[f] = true; drop[#drop + 1] = f end
      end
    end
  end
  if #drop > 0 and ks.e and redis.call('EXISTS', ks.e) == 1 then
    -- items only the dropped list blobs refer to, checked against the kept blobs of
    -- the same channels (an item's digest covers its channel: none is shared across)
    local candidates, chans, dropped = {}, {}, {}
    for _, blob in ipairs(hmget(ks.b, drop)) do
      for _, r in ipairs(item_refs(blob)) do candidates[r] = true end
    end
    for _, f in ipairs(drop) do chans[chan(f)] = true; dropped[f] = true end
    local kept = {}
    for f, _ in pairs(used) do
      if chans[chan(f)] and not dropped[f] then kept[#kept + 1] = f end
    end
    local live = {}
    for _, v in ipairs(hmget(ks.b, kept)) do if v then live[#live + 1] = v end end
    gc_items(ks, candidates, live)
  end
  hdel(ks.b, drop)
end
"""
_PRELUDE = _CORE + _INDEX + _ADMIN


# ARGV: id, record, run, ttl_ms, ns, pairs ('' = no metadata index, else '=' followed by
# the comma-joined indexed pairs), keep_last (0 = all), the number n of list item
# arguments, the items' generation ('v' + the one the client saw: the items it left out
# are stored if it is still current, else reply -1 and write nothing; 'n' + a fresh
# token: the generation to start if there is none), n item digest/value arguments,
# then blob field/value pairs.
# Order matters: blobs, record, then the index entry, so even a script error
# part-way (scripts are not rolled back) never leaves a checkpoint without its blobs.
# Reply: 1 (no list items declared), the items' generation ('' = none), or (when the
# global thread index must change) {new thread, runs new to the thread, pairs new to
# the thread, gone, dropped pairs, dropped runs, generation}.
_PUT = r"""
local id, rec, run, ttl, ns = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local indexing, limit = ARGV[6] ~= '', tonumber(ARGV[7])
local ks = declared()
local new_thread = redis.call('EXISTS', KEYS[1]) == 0
local nitems, ctl = tonumber(ARGV[8]), ARGV[9]
local gen = ks.e and redis.call('HGET', ks.e, GEN)
-- the client left out items it saw stored: unless a prune, a retention or a delete
-- (here or by another client) collected items since, they are still there
if string.sub(ctl, 1, 1) == 'v' and gen ~= string.sub(ctl, 2) then return -1 end
-- list items first (content-addressed: writing one again changes nothing), then blobs
for k = 10, 9 + nitems, 1000 do
  redis.call('HSET', ks.e, unpack(ARGV, k, math.min(k + 999, 9 + nitems)))
end
if nitems > 0 and not gen then
  gen = string.sub(ctl, 2)
  redis.call('HSET', ks.e, GEN, gen)
end
for k = 10 + nitems, #ARGV, 1000 do
  redis.call('HSET', ks.b, unpack(ARGV, k, math.min(k + 999, #ARGV)))
end
local fresh, new_runs, drops = {}, {}, new_drops()
if indexing then add_pairs(split(string.sub(ARGV[6], 2), ','), fresh) end
if (run ~= '' or indexing) and redis.call('HEXISTS', ks.c, id) == 1 then
  -- the same id written again: forget what the old record contributed
  local _, old_run, _, _, old_prs = header(redis.call('HGET', ks.c, id))
  drop_pairs(old_prs, drops)
  if old_run ~= '' and old_run ~= run then
    redis.call('ZREM', RUNS, old_run .. ',' .. ns .. ',' .. id)
    if not run_left(old_run) then drops.runs[old_run] = true; drops.n = drops.n + 1 end
  end
end
-- a checkpoint of a run joins the run index (before its record: see above)
if run ~= '' then
  if not run_left(run) then new_runs[1] = run end
  redis.call('ZADD', RUNS, 0, run .. ',' .. ns .. ',' .. id)
end
redis.call('SADD', KEYS[1], ns)
redis.call('HSET', ks.c, id, rec)
-- the index entry is the commit point: "latest" and listings only see complete records
redis.call('ZADD', ks.i, 0, id)
if limit > 0 then
  retain(ks, ns, limit, drops)
  if gen then gen = redis.call('HGET', ks.e, GEN) end
end
touch(ttl, ks, ks)
if new_thread or #new_runs > 0 or #fresh > 0 or drops.n > 0 then
  local r = report(drops)
  return {new_thread and 1 or 0, new_runs, fresh, r[1], r[2], r[3], gen or ''}
end
if ks.e then return gen or '' end
return 1
"""

# ARGV: id, ttl_ms, ns, then field, value, overwrite ('0'/'1') triples.
# Reply: the number of writes added, or {that, 1} when this created the thread.
_PUT_WRITES = r"""
local id, ttl, ns = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local ks = declared()
local added = {}
for k = 4, #ARGV, 3 do
  local cmd = (ARGV[k + 2] == '1') and 'HSET' or 'HSETNX'
  if redis.call(cmd, ks.w, ARGV[k], ARGV[k + 1]) == 1 then added[#added + 1] = ARGV[k] end
end
local new_thread = false
if #added > 0 then
  local cur = redis.call('HGET', ks.d, id)
  local joined = table.concat(added, ',')
  redis.call('HSET', ks.d, id, (cur and cur ~= '') and (cur .. ',' .. joined) or joined)
  -- whoever creates the thread marker reports the new thread (for the thread index)
  new_thread = redis.call('SADD', KEYS[1], ns) == 1 and redis.call('SCARD', KEYS[1]) == 1
end
touch(ttl, ks, ks)
if new_thread then return {#added, 1} end
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
return {out, cursor, redis.call('EXISTS', KEYS[1])}
"""

_DELETE_THREAD = r"""
local drops = delete_thread()
return report(drops)
"""

# ARGV: encoded run ids. Reply: report() (gone, dropped pairs, dropped runs)
_DELETE_RUNS = r"""
local touched, drops = {}, new_drops()
for k = 1, #ARGV do
  local lo, hi = run_range(ARGV[k])
  for _, m in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], lo, hi)) do
    local p = split(m, ',')
    delete_checkpoint(nskeys(p[2]), p[2], p[3], drops)
    touched[p[2]] = true
  end
  redis.call('ZREMRANGEBYLEX', KEYS[2], lo, hi)
  drops.runs[ARGV[k]] = true
end
for ns, _ in pairs(touched) do gc_namespace(ns, nskeys(ns)) end
return report(drops)
"""

# ARGV: strategy
# keep_latest keeps, per namespace, the latest checkpoint and every ancestor up to the
# nearest one holding a stored blob for each delta channel (named in the latest
# record's header) that the latest lacks: DeltaChannel state stays reconstructible.
_PRUNE = r"""
local strategy = ARGV[1]
if strategy == 'delete' then return report(delete_thread()) end
local drops = new_drops()
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
      if not keep[id] then delete_checkpoint(ks, ns, id, drops) end
    end
  end
  gc_namespace(ns, ks)
end
gc_runs()
return report(drops)
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
    redis.call('HGETALL', ks.e),
  }
end
return cmsgpack.pack(out)
"""

# ARGV: dump, ttl_ms. Merges a dumped thread into this thread. Reply: like put's.
_LOAD = r"""
local ttl, tk = tonumber(ARGV[2]), declared()
local data = cmsgpack.unpack(ARGV[1])
local new_thread = redis.call('EXISTS', KEYS[1]) == 0
local function hset_flat(key, flat)
  for i = 1, #flat, 1000 do redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat))) end
end
local runs, new_runs, seen, fresh = data[1], {}, {}, {}
for _, m in ipairs(runs) do
  local run = string.sub(m, 1, string.find(m, ',', 1, true) - 1)
  if not seen[run] then
    seen[run] = true
    if not run_left(run) then new_runs[#new_runs + 1] = run end
  end
end
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
  local recs = d[3]
  for i = 1, #recs, 2 do
    if redis.call('HEXISTS', ks.c, recs[i]) == 0 then
      local _, _, _, _, prs = header(recs[i + 1])
      add_pairs(prs, fresh)
    end
    redis.call('HSET', ks.c, recs[i], recs[i + 1])
  end
  hset_flat(ks.b, d[4])
  hset_flat(ks.w, d[5])
  hset_flat(ks.d, d[6])
  -- items only (adding items never invalidates what a client saw stored here)
  local its = {}
  for i = 1, #(d[7] or {}), 2 do
    if d[7][i] ~= GEN then its[#its + 1] = d[7][i]; its[#its + 1] = d[7][i + 1] end
  end
  hset_flat(ks.e, its)
  touch(ttl, tk, ks)
end
touch(ttl, tk)
return {new_thread and 1 or 0, new_runs, fresh, 0, {}, {}}
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
  out[#out + 1] = {cursor, r, blobs, hmget(ks.w, split(redis.call('HGET', ks.d, cursor), ',')),
                   load_items(ks, blobs)}
  for i, f in ipairs(fields) do
    local ch = string.sub(f, 1, string.find(f, ':', 1, true) - 1)
    if remaining[ch] and blobs[i] ~= '' then remaining[ch] = nil; left = left - 1 end
  end
  cursor = parent
end
return out
"""

# What the thread index should hold for this thread: {pairs, runs}, or nil if no thread.
_INDEX_INFO = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local runs, seen = {}, {}
for _, m in ipairs(redis.call('ZRANGE', RUNS, 0, -1)) do
  local run = string.sub(m, 1, string.find(m, ',', 1, true) - 1)
  if not seen[run] then seen[run] = true; runs[#runs + 1] = run end
end
return {redis.call('HKEYS', XKEY), runs}
"""

# --- the global thread index (one hash tag, ``P:{%ix}:...``: one slot, one shard) ---
# All index keys are sorted sets with score 0 (lexicographic order of encoded thread
# ids, so a cursor is a member and paging is stable while threads come and go).

# KEYS: index keys. ARGV: the index TTL in ms ('0': none), then (op, key number,
# member) triples; op 'a' adds, 'r' removes, 'd' deletes the key (member unused).
# With a TTL an add makes a new key expire after it and extends (never shortens) an
# expiring one; a key that already exists without one stays so (written by a saver
# without a TTL, or before index TTLs). Without a TTL an add makes the key persistent.
_INDEX_UPDATE = r"""
local ttl, seen = tonumber(ARGV[1]), {}
for k = 2, #ARGV, 3 do
  local key, op = KEYS[tonumber(ARGV[k + 1])], ARGV[k]
  if op == 'a' then
    if not seen[key] then
      seen[key] = true
      if ttl <= 0 then redis.call('PERSIST', key)
      else
        local p = redis.call('PTTL', key)
        if p == -2 or (p >= 0 and p < ttl) then seen[key] = 'expire' end
      end
    end
    redis.call('ZADD', key, 0, ARGV[k + 2])
    if seen[key] == 'expire' then redis.call('PEXPIRE', key, ttl); seen[key] = true end
  elseif op == 'r' then redis.call('ZREM', key, ARGV[k + 2])
  else redis.call('DEL', key); seen[key] = nil end
end
return 1
"""

# KEYS: index keys to intersect. ARGV: cursor ('' = from the start), n.
# Walks the smallest set from the cursor; a member counts when every other set holds it.
# Reply {members, cursor ('' = done)}; examines at most 20 x n members per call.
_INDEX_PAGE = r"""
local cursor, n = ARGV[1], tonumber(ARGV[2])
local order = {}
for i = 1, #KEYS do order[i] = {KEYS[i], redis.call('ZCARD', KEYS[i])} end
table.sort(order, function(a, b) return a[2] < b[2] end)
local out, budget = {}, 20 * n
local lo = (cursor == '') and '-' or ('(' .. cursor)
while #out < n and budget > 0 do
  local batch = redis.call('ZRANGEBYLEX', order[1][1], lo, '+', 'LIMIT', 0, math.min(budget, 2 * n))
  if #batch == 0 then return {out, ''} end
  for _, m in ipairs(batch) do
    budget = budget - 1
    local all = true
    for i = 2, #order do
      if not redis.call('ZSCORE', order[i][1], m) then all = false; break end
    end
    if all then out[#out + 1] = m end
    lo = '(' .. m
    if #out >= n or budget <= 0 then return {out, m} end
  end
end
return {out, string.sub(lo, 2)}
"""

CHECKPOINT_SCRIPTS: dict[str, str] = {
    "put": _PRELUDE + _PUT,
    "put_writes": _CORE + _PUT_WRITES,
    "get": _CORE + _GET,
    "list": _CORE + _LIST,
    "delete_thread": _PRELUDE + _DELETE_THREAD,
    "delete_runs": _PRELUDE + _DELETE_RUNS,
    "prune": _PRELUDE + _PRUNE,
    "dump": _CORE + _DUMP,
    "load": _PRELUDE + _LOAD,
    "history": _CORE + _HISTORY,
    "index_info": _CORE + _INDEX + _INDEX_INFO,
}
# KEYS: thread_keys. Reply: 1 if the thread has data, else 0.
CHECKPOINT_SCRIPTS["alive"] = "return redis.call('EXISTS', KEYS[1])"
CHECKPOINT_SCRIPTS["index_update"] = _INDEX_UPDATE
CHECKPOINT_SCRIPTS["index_page"] = _INDEX_PAGE


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


# --- the store (store/base.py) ----------------------------------------------------------
# One namespace's keys per call (one cluster slot). Key names follow
# :class:`langgraph_valkey_cache._keys.StoreKeys`: the caller passes the item key
# (``KEYS[1]``) or a namespace's zset key, and the bases the scripts append ``K`` / ``K:j``
# to. Times come from the server's ``TIME`` so every client agrees.

_STORE_PRELUDE = r"""
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
_STORE_PUT = r"""
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
_STORE_DELETE = r"""
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
_STORE_MGET = r"""
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
_STORE_LIST = r"""
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
_STORE_ALIVE = r"""
local _, now_ms = now()
prune(ARGV[1], KEYS[1], now_ms)
return redis.call('ZCARD', KEYS[1])
"""

STORE_SCRIPTS: dict[str, str] = {
    name: _STORE_PRELUDE + body
    for name, body in {
        "put": _STORE_PUT,
        "delete": _STORE_DELETE,
        "mget": _STORE_MGET,
        "list": _STORE_LIST,
        "alive": _STORE_ALIVE,
    }.items()
}
