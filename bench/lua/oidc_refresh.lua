-- wrk script: the refresh grant (POST TOKEN_PATH, grant_type=refresh_token, HTTP Basic client
-- authentication), each token used once. TOKENS names a file of refresh tokens, one a line, each
-- its own family; the lines are dealt to wrk's threads in turn and every thread keeps its own pool.
-- A request takes a token from the pool; its answer's refresh_token (the successor, when the system
-- rotates) goes back into the pool, so every family is rotated one request after another and no
-- token is ever presented twice (a second use would hit the retry grace or end the family). A
-- system that does not rotate (node-oidc-provider for a confidential client) answers no
-- refresh_token: then a token is put back once its answer came, still one request per token at a
-- time. Prepare at least CONNS + 2 * threads tokens (wrk asks thread 1 for one request before the
-- run to check it, and that token is never sent).
-- Env: TOKENS, CLIENT_BASIC (base64 of id:secret), TOKEN_PATH (/oidc/token), WRK_THREADS (2).
local file = assert(os.getenv("TOKENS"), "TOKENS not set")
local basic = assert(os.getenv("CLIENT_BASIC"), "CLIENT_BASIC not set")
local path = os.getenv("TOKEN_PATH") or "/oidc/token"
local nthreads = tonumber(os.getenv("WRK_THREADS") or "2")
local headers = {
  ["Content-Type"] = "application/x-www-form-urlencoded",
  ["Authorization"] = "Basic " .. basic,
}

local threads, counter = {}, 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

pool, sent, seen, lost, starved, rotated, kept = {}, {}, {}, 0, 0, 0, 0
function init(args)
  local i = 0
  for line in io.lines(file) do
    if line ~= "" then
      if i % nthreads == tid then
        table.insert(pool, line)
        seen[line] = true
      end
      i = i + 1
    end
  end
end

request = function()
  local token = table.remove(pool)
  if token == nil then
    starved = starved + 1          -- no token left: the answer is an error and is counted
    token = "starved"
  else
    table.insert(sent, token)
  end
  return wrk.format("POST", path, headers, "grant_type=refresh_token&refresh_token=" .. token)
end

response = function(status, hdrs, body)
  local presented = table.remove(sent)
  local successor = status == 200 and string.match(body, '"refresh_token":"([^"]+)"')
  if successor then
    -- Answers on different connections come in any order, so "rotated" means a token never
    -- seen before, not one different from this request's.
    if seen[successor] then kept = kept + 1 else rotated = rotated + 1; seen[successor] = true end
    table.insert(pool, successor)
  elseif status == 200 and presented then
    kept = kept + 1
    table.insert(pool, presented)
  elseif presented then
    lost = lost + 1                -- the family is gone for this run
  end
end

done = function(summary, latency, requests)
  local r, k, l, s = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    r, k, l, s = r + t:get("rotated"), k + t:get("kept"), l + t:get("lost"), s + t:get("starved")
  end
  io.write(string.format("rotated=%d kept=%d lost=%d starved=%d\n", r, k, l, s))
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end
