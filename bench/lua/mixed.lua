-- The soak's mixed load (bench/soak.sh): sessions of an application through API v1 and people
-- signing in on the pages, in the steady state a long run needs (every session created is ended).
--
-- Each wrk thread has ONE connection (run wrk with -t N -c N), so a response always answers the
-- thread's last request and a sign-in can go step by step. Per thread:
--   * a pool of at most POOL live sessions: an empty slot is filled by POST /v1/sessions; then
--     each request validates a pooled token (80 %), rotates one (10 %, the new token replaces it)
--     or logs one out (10 %, its slot is refilled later);
--   * every SIGNIN_EVERY requests, a person signs in and out on the pages: POST /login (password,
--     the double-submit CSRF cookie), GET /login/stay, POST /login/stay ("No"), GET /account,
--     POST /logout — five requests, one Argon2id check.
-- Env: KEY (API key), USERNAME, PASSWORD, POOL (50), SIGNIN_EVERY (400).
local key = os.getenv("KEY") or ""
local username = os.getenv("USERNAME") or "soak"
local password = os.getenv("PASSWORD") or ""
local pool_size = tonumber(os.getenv("POOL") or "50")
local signin_every = tonumber(os.getenv("SIGNIN_EVERY") or "400")

local api = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
local pool = {}
local counter = 0
local pending = nil   -- what the last request was: "create", "rotate" (with slot), or a sign-in step
local slot = nil
local signin = nil    -- {stage, cookie, csrf}
refused = {}          -- "what status" -> count, for the summary (read by done() per thread)
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

local function form(fields)
  local parts = {}
  for _, kv in ipairs(fields) do
    local value = string.gsub(kv[2], "([^%w%-_%.~])", function(c) return string.format("%%%02X", string.byte(c)) end)
    table.insert(parts, kv[1] .. "=" .. value)
  end
  return table.concat(parts, "&")
end

local function page_post(path, cookie, body)
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Sec-Fetch-Site"] = "same-origin",
    ["Cookie"] = cookie,
  }, body)
end

local function sign_in_request()
  local s = signin
  if s.stage == 1 then
    return page_post("/login", "__Host-portcullis-csrf=soak-csrf",
      form({{"csrf", "soak-csrf"}, {"username", username}, {"password", password}, {"return_to", "/account"}}))
  elseif s.stage == 2 then
    return wrk.format("GET", "/login/stay", {["Cookie"] = s.cookie})
  elseif s.stage == 3 then
    return page_post("/login/stay", s.cookie, form({{"csrf", s.csrf}, {"stay", "no"}}))
  elseif s.stage == 4 then
    return wrk.format("GET", "/account", {["Cookie"] = s.cookie})
  else
    return page_post("/logout", s.cookie, form({{"csrf", s.csrf}}))
  end
end

local function cookie_of(headers, name)
  for k, v in pairs(headers) do
    if string.lower(k) == "set-cookie" then
      local value = string.match(v, "^" .. string.gsub(name, "%-", "%%-") .. "=([^;]+)")
      if value then return name .. "=" .. value end
    end
  end
  return nil
end

local function sign_in_response(status, headers, body)
  local s = signin
  local ok = true
  if s.stage == 1 then
    s.cookie = cookie_of(headers, "__Host-portcullis-sign-in")
    ok = status == 303 and s.cookie ~= nil
  elseif s.stage == 2 or s.stage == 4 then
    s.csrf = string.match(body or "", 'name="csrf" value="([^"]+)"')
    ok = status == 200 and s.csrf ~= nil
  elseif s.stage == 3 then
    s.cookie = cookie_of(headers, "__Host-portcullis")
    ok = status == 303 and s.cookie ~= nil
  end
  if ok and s.stage < 5 then
    s.stage = s.stage + 1
  else
    signin = nil -- done, or broken off (counted as a non-2xx/3xx by wrk if it was one)
  end
end

request = function()
  counter = counter + 1
  if signin == nil and signin_every > 0 and counter % signin_every == 0 then
    signin = {stage = 1}
  end
  if signin ~= nil then
    pending = "signin"
    return sign_in_request()
  end
  if #pool < pool_size and (#pool == 0 or math.random() < 0.1) then
    pending = "create"
    local subject = string.format("soak-%d-%d", math.random(1, 1000000000), counter)
    return wrk.format("POST", "/v1/sessions", api,
      '{"subject":"' .. subject .. '","device":{"user_agent":"soak/1.0","ip":"127.0.0.1"},"data":{"cart":[1,2,3]}}')
  end
  slot = math.random(1, #pool)
  local token = pool[slot]
  local r = math.random()
  if r < 0.8 then
    pending = "validate"
    return wrk.format("POST", "/v1/sessions/validate", api, '{"token":"' .. token .. '"}')
  elseif r < 0.9 then
    pending = "rotate"
    return wrk.format("POST", "/v1/sessions/rotate", api, '{"token":"' .. token .. '"}')
  else
    pending = "logout"
    -- Out of the pool now: the answer is 204 either way.
    pool[slot] = pool[#pool]
    table.remove(pool)
    return wrk.format("POST", "/v1/sessions/logout", api, '{"token":"' .. token .. '"}')
  end
end

response = function(status, headers, body)
  if status >= 400 then
    local what = pending
    if pending == "signin" then what = "signin" .. signin.stage end
    local k = what .. " " .. status
    refused[k] = (refused[k] or 0) + 1
  end
  if pending == "signin" then
    sign_in_response(status, headers, body)
  elseif pending == "create" then
    local token = status == 201 and string.match(body, '"token":"(pcs_[^"]+)"')
    if token then table.insert(pool, token) end
  elseif pending == "rotate" then
    local token = status == 200 and string.match(body, '"token":"(pcs_[^"]+)"')
    if token and pool[slot] then
      pool[slot] = token
    elseif pool[slot] then
      pool[slot] = pool[#pool]
      table.remove(pool)
    end
  elseif pending == "validate" and status ~= 200 and pool[slot] then
    pool[slot] = pool[#pool]
    table.remove(pool)
  end
  pending = nil
end

done = function(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
  local all = {}
  for _, thread in ipairs(threads) do
    for k, n in pairs(thread:get("refused") or {}) do all[k] = (all[k] or 0) + n end
  end
  local parts = {}
  for k, n in pairs(all) do table.insert(parts, k .. "=" .. n) end
  table.sort(parts)
  io.write("refused: " .. table.concat(parts, ", ") .. "\n")
end
