-- wrk script: POST /v1/sessions/validate with one pre-created session token.
-- TOKEN and KEY come from the environment (set by validate.sh).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
wrk.body = '{"token":"' .. os.getenv("TOKEN") .. '"}'

done = function(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end
