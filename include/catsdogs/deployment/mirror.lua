-- catsdogs shadow mirror for HAProxy 2.6 (Lua 5.3): a copy of each live POST /predict* request
-- goes to the shadow named in the proxy's map (key `shadow`, value `host:port` or `off`, set at
-- run time with `set map`/`add map`); the shadow's answers are read and thrown away, never sent
-- to a client. The request path only appends to a bounded in-memory queue (no I/O, no wait):
-- when QUEUE_MAX copies are waiting, or the body is not whole in HAProxy's buffer, the copy is
-- dropped. WORKERS background tasks send the queue, each copy on its own connection (core.tcp:
-- HAProxy 2.6's core.httpclient lost 22-29% of the copies of clients that open a connection per
-- request, core.tcp none of 100). Loaded by the local target (catsdogs.deployment.targets.local
-- copies it beside its haproxy.cfg) and the compose proxy (docker-compose.yaml mounts this file).
-- Why this mirror: catsdogs.deployment.phases; tests: tests/deployment/test_mirror.py.
local QUEUE_MAX = 64
local WORKERS = 2
local TIMEOUT_S = 30
local SKIPPED = { connection = true, ["content-length"] = true, host = true,
                  ["transfer-encoding"] = true, expect = true, ["keep-alive"] = true }

local queue = {}   -- table.insert/table.remove only: one C call each, never cut by a yield

core.register_action("catsdogs_mirror", { "http-req" }, function(txn)
  local shadow = txn:get_var("txn.catsdogs_shadow")
  if shadow == nil or shadow == "off" or #queue >= QUEUE_MAX then
    return
  end
  local body = txn.sf:req_body() or ""
  local length = tonumber(txn.sf:req_fhdr("content-length") or "")
  if length == nil or length ~= #body then
    return   -- chunked, or larger than the buffer: not copied whole
  end
  local headers = { "x-catsdogs-mirror: 1" }
  for name, values in pairs(txn.http:req_get_headers()) do
    if not SKIPPED[name] then
      local i = 0
      while values[i] ~= nil do
        headers[#headers + 1] = name .. ": " .. values[i]
        i = i + 1
      end
    end
  end
  local host, port = shadow:match("^(.+):(%d+)$")
  table.insert(queue, { host = host, port = tonumber(port), path = txn.sf:path(),
                        headers = headers, body = body })
end)

-- one copy over a new connection (HTTP/1.1, Connection: close); the answer is read and dropped
local function send(item)
  local socket = core.tcp()
  socket:settimeout(TIMEOUT_S)
  local ok, err = socket:connect(item.host, item.port)
  if ok == nil then
    return err
  end
  local head = { "POST " .. item.path .. " HTTP/1.1", "host: " .. item.host .. ":" .. item.port,
                 "connection: close", "content-length: " .. #item.body }
  for _, line in ipairs(item.headers) do
    head[#head + 1] = line
  end
  ok, err = socket:send(table.concat(head, "\r\n") .. "\r\n\r\n" .. item.body)
  if ok ~= nil then
    socket:receive("*a")
  end
  socket:close()
  return err
end

local function worker()
  while true do
    local item = table.remove(queue, 1)
    if item ~= nil then
      local ok, err = pcall(send, item)
      if not ok or err ~= nil then
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
