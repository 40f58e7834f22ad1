-- wrk script: the authorization code grant (POST TOKEN_PATH, grant_type=authorization_code with
-- the PKCE verifier, HTTP Basic client authentication), each code presented once. CODES names a
-- file of fresh codes, one a line (written by oidc_authorize.lua), dealt to wrk's threads in turn.
-- A thread that runs out of codes sends a code that does not exist (an error, counted, and
-- reported as exhausted=): the run is then too long for the codes prepared.
-- Env: CODES, CLIENT_BASIC, VERIFIER, TOKEN_PATH (/oidc/token), REDIRECT_URI, WRK_THREADS (2).
local file = assert(os.getenv("CODES"), "CODES not set")
local basic = assert(os.getenv("CLIENT_BASIC"), "CLIENT_BASIC not set")
local verifier = assert(os.getenv("VERIFIER"), "VERIFIER not set")
local path = os.getenv("TOKEN_PATH") or "/oidc/token"
local redirect = os.getenv("REDIRECT_URI") or "http://127.0.0.1:8080/cb"
local nthreads = tonumber(os.getenv("WRK_THREADS") or "2")
local headers = {
  ["Content-Type"] = "application/x-www-form-urlencoded",
  ["Authorization"] = "Basic " .. basic,
}
local function escape(s)
  return (string.gsub(s, "[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end
local tail = "&redirect_uri=" .. escape(redirect) .. "&code_verifier=" .. escape(verifier)

local threads, counter = {}, 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

codes, next_code, exhausted, ncodes = {}, 1, 0, 0
function init(args)
  local i = 0
  for line in io.lines(file) do
    if line ~= "" then
      if i % nthreads == tid then table.insert(codes, line) end
      i = i + 1
    end
  end
  ncodes = #codes
end

request = function()
  local code = codes[next_code]
  if code == nil then
    exhausted = exhausted + 1
    code = "exhausted"
  else
    next_code = next_code + 1
  end
  return wrk.format("POST", path, headers, "grant_type=authorization_code&code=" .. code .. tail)
end

done = function(summary, latency, requests)
  local e, left = 0, 0
  for _, t in ipairs(threads) do
    e = e + t:get("exhausted")
    left = left + (t:get("ncodes") - t:get("next_code") + 1)
  end
  io.write(string.format("exhausted=%d codes_left=%d\n", e, left))
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end
