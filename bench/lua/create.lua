-- POST /v1/sessions for a new random subject each time (Portcullis), or POST /login (peers).
-- MODE=portcullis|peer, KEY from the environment.
local mode = os.getenv("MODE") or "portcullis"
local key = os.getenv("KEY") or ""
local counter = 0

request = function()
  counter = counter + 1
  local subject = string.format("bench-%d-%d", math.random(1, 1000000000), counter)
  if mode == "peer" then
    return wrk.format("POST", "/login", {["Content-Type"] = "application/json"}, '{"user_id":"' .. subject .. '"}')
  end
  return wrk.format("POST", "/v1/sessions",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key},
    '{"subject":"' .. subject .. '"}')
end

done = function(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end
