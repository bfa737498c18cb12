-- wrk script for reader benchmarks (docs/benchmarks.md, "Reads with wrk"):
-- GET /v1/secret/data/bench/keys/k<random> as `secretlog bench reads` preloads them.
-- SECRETLOG_TOKEN_FILE names the token file; SECRETLOG_BENCH_KEYS how many keys (default 5000).
local token = io.open(os.getenv("SECRETLOG_TOKEN_FILE") or ".secretlog/root-token"):read("*l")
local keys = tonumber(os.getenv("SECRETLOG_BENCH_KEYS") or "5000")
wrk.headers["X-Vault-Token"] = token
request = function()
  return wrk.format("GET", "/v1/secret/data/bench/keys/k" .. math.random(0, keys - 1))
end
