-- POST /login with a right password for one of USERS accounts (bench1 … benchN) in turn, with
-- the double-submit CSRF value in both the cookie and the form. PASSWORD, USERS, CSRF from the
-- environment. A sign-in answers 303; anything from 400 on is counted as non-2xx.
local password = os.getenv("PASSWORD") or ""
local users = tonumber(os.getenv("USERS") or "1")
local csrf = os.getenv("CSRF") or ""
local counter = 0

local function encode(text)
  return (text:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

request = function()
  counter = counter + 1
  local body = "csrf=" .. csrf .. "&return_to=%2F&username=bench" .. (counter % users + 1) ..
    "&password=" .. encode(password)
  return wrk.format("POST", "/login", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Cookie"] = "__Host-portcullis-csrf=" .. csrf,
  }, body)
end

done = function(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end
