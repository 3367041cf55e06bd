-- catsdogs shadow mirror for HAProxy 2.6 (Lua 5.3): a copy of each live POST /predict* request
-- goes to the shadow named in the proxy's mirror map (key `shadow`, value `host:port` or `off`,
-- set at run time with `set map`); the shadow's answers are read and thrown away, never sent to
-- a client. The request path only appends to a bounded in-memory queue (no I/O, no wait): when
-- QUEUE_MAX copies are waiting, or the body is not whole in HAProxy's buffer, the copy is dropped.
-- WORKERS background tasks send the queue with core.httpclient. Loaded by the local target
-- (catsdogs.deployment.targets.local) and the compose proxy (docker/proxy/mirror.lua, kept equal
-- by tests/deployment/test_phases.py). Why this mirror: catsdogs.deployment.phases.
local QUEUE_MAX = 64
local WORKERS = 2
local TIMEOUT_MS = 30000
local SKIPPED = { connection = true, ["content-length"] = true, host = true,
                  ["transfer-encoding"] = true, expect = true, ["keep-alive"] = true }

local queue, head, tail = {}, 1, 0

core.register_action("catsdogs_mirror", { "http-req" }, function(txn)
  local shadow = txn:get_var("txn.catsdogs_shadow")
  if shadow == nil or shadow == "off" or tail - head + 1 >= QUEUE_MAX then
    return
  end
  local body = txn.sf:req_body() or ""
  local length = tonumber(txn.sf:req_fhdr("content-length") or "")
  if length == nil or length ~= #body then
    return   -- chunked, or larger than the buffer: not copied whole
  end
  local headers = { ["x-catsdogs-mirror"] = { "1" }, ["content-length"] = { tostring(#body) } }
  for name, values in pairs(txn.http:req_get_headers()) do
    if not SKIPPED[name] then
      local copied, i = {}, 0
      while values[i] ~= nil do
        copied[#copied + 1] = values[i]
        i = i + 1
      end
      headers[name] = copied
    end
  end
  tail = tail + 1
  queue[tail] = { url = "http://" .. shadow .. txn.sf:path(), headers = headers, body = body }
end)

local function worker()
  while true do
    if head <= tail then
      local item = queue[head]
      queue[head] = nil
      head = head + 1
      local ok, err = pcall(function()
        core.httpclient():post({ url = item.url, headers = item.headers, body = item.body,
                                 timeout = TIMEOUT_MS })
      end)
      if not ok then
        core.Debug("catsdogs mirror: " .. tostring(err))
      end
    else
      core.msleep(10)
    end
  end
end

for _ = 1, WORKERS do
  core.register_task(worker)
end
