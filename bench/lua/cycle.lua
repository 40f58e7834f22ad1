-- A session pool per wrk thread: ACTION=rotate keeps rotating sessions (each answer's new token
-- goes back to the pool), ACTION=logout logs each created session out. When the pool is empty the
-- next request creates a session. MODE=portcullis|peer (peers: /login, /logout with the cookie).
local mode = os.getenv("MODE") or "portcullis"
local action = os.getenv("ACTION") or "rotate"
local key = os.getenv("KEY") or ""
local pool = {}
local counter = 0
local json = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}

request = function()
  local token = table.remove(pool)
  if token == nil then
    counter = counter + 1
    local subject = string.format("cycle-%d-%d", math.random(1, 1000000000), counter)
    if mode == "peer" then
      return wrk.format("POST", "/login", {["Content-Type"] = "application/json"}, '{"user_id":"' .. subject .. '"}')
    end
    return wrk.format("POST", "/v1/sessions", json, '{"subject":"' .. subject .. '"}')
  end
  if mode == "peer" then
    return wrk.format("POST", "/logout", {["Cookie"] = token})
  end
  return wrk.format("POST", "/v1/sessions/" .. action, json, '{"token":"' .. token .. '"}')
end

response = function(status, headers, body)
  if mode == "peer" then
    local cookie = headers["set-cookie"] or headers["Set-Cookie"]
    if cookie and status == 200 then
      table.insert(pool, string.match(cookie, "^[^;]+"))
    end
    return
  end
  local token = string.match(body, '"token":"(pcs_[^"]+)"')
  if token and (action == "rotate" or status == 201) then
    table.insert(pool, token)
  end
end

done = function(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end
