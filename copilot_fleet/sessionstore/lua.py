"""The Redis scripts of the session store. Each request of the session filesystem is one script: one round trip,
and atomic, so a write's fencing check and the write itself cannot be separated by anything another server does.

Results are tables `{status, ...}`: status "OK", or an error name the Python side turns into an exception
("ENOENT", "EEXIST", "ENOTDIR", "EISDIR", "ENOTEMPTY", "EINVAL", "EQUOTA", "FENCED") with a message.
Timestamps are Redis's own clock (TIME), so every server sees one clock.
"""

from __future__ import annotations

# Shared helpers. Tree values are "<kind>:<birth ms>:<mtime ms>", kind f (file) or d (directory).
_HELPERS = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function parse(value)
  if not value then return nil end
  local kind, birth, mtime = string.match(value, '^(%a):(%d+):(%d+)$')
  return {kind = kind, birth = birth, mtime = mtime}
end

local function entry(tree, rel)
  return parse(redis.call('HGET', tree, rel))
end

local function parent(rel)
  if rel == '' then return nil end
  local p = string.match(rel, '^(.*)/[^/]*$')
  if p then return p end
  return ''
end

local function basename(rel)
  return string.match(rel, '([^/]*)$')
end

local function is_below(rel, dir)
  if dir == '' then return rel ~= '' end
  return string.sub(rel, 1, #dir + 1) == dir .. '/'
end

local function fail(code, message)
  return {code, message}
end
"""

READ_SCRIPT = (
    _HELPERS
    + r"""
-- KEYS[1] tree, KEYS[2] content key of ARGV[2]
-- ARGV[1] op (read | stat | exists | readdir), ARGV[2] relative path, ARGV[3] path as the CLI sent it
local tree, rel, shown = KEYS[1], ARGV[2], ARGV[3]
local op = ARGV[1]
local e = entry(tree, rel)
if op == 'exists' then
  if e then return {'OK', 1} end
  return {'OK', 0}
end
if not e then return fail('ENOENT', 'no such file or directory: ' .. shown) end
if op == 'read' then
  if e.kind == 'd' then return fail('EISDIR', shown .. ' is a directory, not a file') end
  return {'OK', redis.call('GET', KEYS[2]) or ''}
elseif op == 'stat' then
  local size = 0
  if e.kind == 'f' then size = redis.call('STRLEN', KEYS[2]) end
  return {'OK', e.kind, size, e.mtime, e.birth}
elseif op == 'readdir' then
  if e.kind ~= 'd' then return fail('ENOTDIR', shown .. ' is a file, not a directory') end
  local all = redis.call('HGETALL', tree)
  local out = {'OK'}
  for i = 1, #all, 2 do
    local child = all[i]
    if is_below(child, rel) and parent(child) == rel then
      table.insert(out, basename(child))
      table.insert(out, string.sub(all[i + 1], 1, 1))
    end
  end
  return out
end
return fail('EINVAL', 'unknown read operation ' .. op)
"""
)

WRITE_SCRIPT = (
    _HELPERS
    + r"""
-- KEYS[1] bind, KEYS[2] this server's registration, KEYS[3] meta, KEYS[4] tree, KEYS[5] index,
-- KEYS[6] content key of the first path, KEYS[7] content key of the second path (rename)
-- ARGV[1] op (write | append | mkdir | rm | rename), ARGV[2] session id, ARGV[3] server id, ARGV[4] instance,
-- ARGV[5] "1" if a write needs a lease, ARGV[6] max file bytes, ARGV[7] max session bytes, ARGV[8] max entries,
-- ARGV[9] content prefix of the session's files, ARGV[10] first relative path, ARGV[11] as sent,
-- ARGV[12] the session's lease key: read only, so it is not declared in KEYS (Redis checks declared keys of a
-- script for write access, and a server may only read leases), then per op: write/append: ARGV[13] content;
-- mkdir: ARGV[13] recursive ("1"/"0"); rm: ARGV[13] recursive, ARGV[14] force; rename: ARGV[13] second relative
-- path, ARGV[14] as sent
local bind_key, server_key, meta, tree, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local lease_key = ARGV[12]
local op, sid, me, instance = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local need_lease = ARGV[5] == '1'
local max_file, max_session, max_entries = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local content_prefix, rel, shown = ARGV[9], ARGV[10], ARGV[11]

-- Fencing: is this server, this very instance of it, the one the session's current lease holder attached?
local function fence()
  local registered = redis.call('GET', server_key)
  if registered ~= instance then
    if not registered then
      return "server " .. me .. "'s registration in the store expired (was it paused?) and is not renewed yet"
    end
    return 'server ' .. me .. ' was replaced by a newer instance of it; this instance may no longer write'
  end
  local holder = redis.call('GET', lease_key)
  if not holder then
    if need_lease then
      return 'no client holds its lease (it expired or was released), and writes need the lease'
    end
    return nil
  end
  local bound = redis.call('GET', bind_key)
  local token, server = nil, nil
  if bound then token, server = string.match(bound, '^(%S+) (%S+)$') end
  if token ~= holder then
    return "its lease holder has not bound the lease to a server (the fleet client binds it to the server it " ..
      "attaches the session on before attaching)"
  end
  if server == '*' then
    redis.call('SET', bind_key, holder .. ' ' .. me, 'KEEPTTL')
    return nil
  end
  if server ~= me then
    if server == '-' then
      return 'its lease holder is an administrative task (delete or cleanup), not a server'
    end
    return 'its lease holder attached it on server ' .. server .. ', not on this one'
  end
  return nil
end

local refusal = fence()
if refusal then
  return fail('FENCED', 'fenced: session ' .. sid .. ': ' .. refusal .. '; server ' .. me ..
    ' may not write to it')
end

local now = now_ms()
local delta_bytes = 0

local function stamp(kind, birth)
  return kind .. ':' .. (birth or now) .. ':' .. now
end

-- Every missing directory above `r` (top down), or an error if one of them is a file.
local function missing_parents(r)
  local out = {}
  local p = parent(r)
  while p do
    local pe = entry(tree, p)
    if pe then
      if pe.kind ~= 'd' then return nil, fail('ENOTDIR', 'a parent of ' .. shown .. ' is a file') end
      break
    end
    table.insert(out, 1, p)
    p = parent(p)
  end
  return out, nil
end

local function room_for(new_entries, added_bytes)
  if new_entries > 0 and redis.call('HLEN', tree) + new_entries > max_entries then
    return fail('EQUOTA', 'session ' .. sid .. ' would have more than ' .. max_entries .. ' files and directories')
  end
  if added_bytes > 0 then
    local used = tonumber(redis.call('HGET', meta, 'bytes') or '0')
    if used + added_bytes > max_session then
      return fail('EQUOTA', 'session ' .. sid .. ' would hold more than ' .. max_session .. ' bytes')
    end
  end
  return nil
end

local function touch_session()
  redis.call('HSETNX', meta, 'created', now)
  redis.call('HSET', meta, 'modified', now, 'writer', me)
  if delta_bytes ~= 0 then redis.call('HINCRBY', meta, 'bytes', delta_bytes) end
  redis.call('ZADD', index, now, sid)
end

local function put_file(r, key, content, append)
  local e = entry(tree, r)
  if e and e.kind == 'd' then return fail('EISDIR', shown .. ' is a directory, not a file') end
  local parents, err = missing_parents(r)
  if err then return err end
  local old = 0
  if e then old = redis.call('STRLEN', key) end
  local size = #content
  if append then size = old + #content end
  if size > max_file then
    return fail('EQUOTA', shown .. ' would be ' .. size .. ' bytes; at most ' .. max_file .. ' are allowed per file')
  end
  local new_entries = #parents
  if not e then new_entries = new_entries + 1 end
  local q = room_for(new_entries, size - old)
  if q then return q end
  for _, p in ipairs(parents) do redis.call('HSET', tree, p, stamp('d')) end
  if append then redis.call('APPEND', key, content) else redis.call('SET', key, content) end
  redis.call('HSET', tree, r, stamp('f', e and e.birth))
  delta_bytes = size - old
  return nil
end

local function subtree(dir)
  local out = {}
  for _, r in ipairs(redis.call('HKEYS', tree)) do
    if is_below(r, dir) then table.insert(out, r) end
  end
  return out
end

local err = nil
if op == 'write' or op == 'append' then
  err = put_file(rel, KEYS[6], ARGV[13], op == 'append')
elseif op == 'mkdir' then
  local recursive = ARGV[13] == '1'
  local e = entry(tree, rel)
  if e then
    if e.kind ~= 'd' then
      err = fail('EEXIST', shown .. ' already exists as a file')
    elseif not recursive then
      err = fail('EEXIST', shown .. ' already exists')
    end
  else
    local parents, perr = missing_parents(rel)
    if perr then
      err = perr
    elseif #parents > 0 and not recursive then
      err = fail('ENOENT', 'the parent directory of ' .. shown .. ' does not exist')
    else
      err = room_for(#parents + 1, 0)
      if not err then
        for _, p in ipairs(parents) do redis.call('HSET', tree, p, stamp('d')) end
        redis.call('HSET', tree, rel, stamp('d'))
      end
    end
  end
elseif op == 'rm' then
  local recursive, force = ARGV[13] == '1', ARGV[14] == '1'
  local e = entry(tree, rel)
  if not e then
    if not force then err = fail('ENOENT', 'no such file or directory: ' .. shown) end
  elseif e.kind == 'f' then
    delta_bytes = -redis.call('STRLEN', KEYS[6])
    redis.call('UNLINK', KEYS[6])
    redis.call('HDEL', tree, rel)
  else
    local below = subtree(rel)
    if #below > 0 and not recursive then
      err = fail('ENOTEMPTY', 'directory ' .. shown .. ' is not empty')
    else
      for _, r in ipairs(below) do
        local be = entry(tree, r)
        if be.kind == 'f' then
          delta_bytes = delta_bytes - redis.call('STRLEN', content_prefix .. r)
          redis.call('UNLINK', content_prefix .. r)
        end
        redis.call('HDEL', tree, r)
      end
      redis.call('HDEL', tree, rel)
    end
  end
elseif op == 'rename' then
  local dest, dest_shown = ARGV[13], ARGV[14]
  local e = entry(tree, rel)
  local de = entry(tree, dest)
  if not e then
    err = fail('ENOENT', 'no such file or directory: ' .. shown)
  elseif rel == dest then
    err = nil
  elseif e.kind == 'd' and (dest == rel or is_below(dest, rel)) then
    err = fail('EINVAL', 'cannot move directory ' .. shown .. ' into itself (' .. dest_shown .. ')')
  elseif de and de.kind == 'd' and e.kind == 'f' then
    err = fail('EISDIR', dest_shown .. ' is a directory; a file cannot replace it')
  elseif de and de.kind == 'f' and e.kind == 'd' then
    err = fail('ENOTDIR', dest_shown .. ' is a file; a directory cannot replace it')
  elseif de and de.kind == 'd' and #subtree(dest) > 0 then
    err = fail('ENOTEMPTY', 'directory ' .. dest_shown .. ' is not empty')
  else
    local parents, perr = missing_parents(dest)
    if perr then
      err = perr
    else
      err = room_for(#parents, 0)
      if not err then
        for _, p in ipairs(parents) do redis.call('HSET', tree, p, stamp('d')) end
        if e.kind == 'f' then
          if de then delta_bytes = -redis.call('STRLEN', KEYS[7]) end
          redis.call('RENAME', KEYS[6], KEYS[7])
          redis.call('HDEL', tree, rel)
          redis.call('HSET', tree, dest, 'f:' .. e.birth .. ':' .. now)
        else
          local below = subtree(rel)
          redis.call('HDEL', tree, rel)
          redis.call('HSET', tree, dest, 'd:' .. e.birth .. ':' .. now)
          for _, r in ipairs(below) do
            local moved = dest .. string.sub(r, #rel + 1)
            local value = redis.call('HGET', tree, r)
            if string.sub(value, 1, 1) == 'f' then
              redis.call('RENAME', content_prefix .. r, content_prefix .. moved)
            end
            redis.call('HDEL', tree, r)
            redis.call('HSET', tree, moved, value)
          end
        end
      end
    end
  end
else
  err = fail('EINVAL', 'unknown write operation ' .. op)
end

if err then return err end
touch_session()
return {'OK'}
"""
)

# KEYS[1] the session's lease, KEYS[2] bind; ARGV[1] the lease token, ARGV[2] server id, "*" or "-",
# ARGV[3] ttl of the binding in ms. Binds only while the caller still holds the lease: 1 if bound, else 0.
BIND_SCRIPT = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS[1] this server's registration; ARGV[1] our instance nonce, ARGV[2] ttl ms.
# Renews our registration, or takes it again if it expired; 1 if ours now, 0 if another instance has it.
RENEW_REGISTRATION_SCRIPT = r"""
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] our registration; ARGV[1] our instance. Deletes it only while it is ours.
UNREGISTER_SCRIPT = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
