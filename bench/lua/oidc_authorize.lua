-- wrk script: an authorization request answered from a live SSO session. GET AUTH_PATH (the path
-- and query of the request) with the SSO cookie(s) of one of the people signed in: COOKIES names a
-- file of Cookie header values, one person a line, taken in turn (each thread starting at its own
-- line), so the codes, and the sessions their exchange starts, are spread over the people as many
-- people's sign-ins would be. The answer must be a redirect to the client carrying a code; every
-- answer that is not is counted (bad=). With CODES_OUT set, the codes are written there, one a
-- line, in the order they came, for the code exchange load that follows (oidc_code.lua).
-- Env: AUTH_PATH, COOKIES, REDIRECT_URI (http://127.0.0.1:8080/cb), CODES_OUT (optional).
local auth = assert(os.getenv("AUTH_PATH"), "AUTH_PATH not set")
local file = assert(os.getenv("COOKIES"), "COOKIES not set")
local redirect = os.getenv("REDIRECT_URI") or "http://127.0.0.1:8080/cb"
local out = os.getenv("CODES_OUT")

local threads, counter = {}, 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

requests, next_request, codes, bad = {}, 1, {}, 0
function init(args)
  for line in io.lines(file) do
    if line ~= "" then
      table.insert(requests, wrk.format("GET", auth, {["Cookie"] = line}))
    end
  end
  next_request = (tid * 7) % #requests + 1
end

request = function()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

response = function(status, headers, body)
  local location = headers["Location"] or headers["location"] or ""
  local code = (status == 302 or status == 303) and location:sub(1, #redirect) == redirect
    and string.match(location, "[?&]code=([^&]+)")
  if code then
    if out then table.insert(codes, code) end
  else
    bad = bad + 1
  end
end

done = function(summary, latency, requests)
  local total_bad, n = 0, 0
  local f = out and assert(io.open(out, "w"))
  for _, t in ipairs(threads) do
    total_bad = total_bad + t:get("bad")
    if f then
      for _, code in ipairs(t:get("codes")) do f:write(code, "\n"); n = n + 1 end
    end
  end
  if f then f:close() end
  io.write(string.format("codes=%d bad=%d\n", n, total_bad))
  io.write(string.format("non2xx=%d\n", summary.errors.status + total_bad))
end
