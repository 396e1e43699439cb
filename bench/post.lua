-- wrk script for bench/run.py: POST a chat completion, then print one parsable line.
--
-- The body comes from the BENCH_BODY environment variable so one script serves every
-- scenario (direct or through the sidecar, JSON or stream). No `response` hook on
-- purpose: defining one makes wrk copy every body into Lua, which would slow the client
-- down; non-2xx answers are still counted in summary.errors.status.
--
-- Output (one line, values in microseconds except counts and the duration):
--   BENCH_RESULT {"requests":N,"duration_us":D,"p50_us":...,"errors":{...}}

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"chat","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"mean_us":%.1f,"stdev_us":%.1f,"min_us":%d,"max_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9),
    e.connect, e.read, e.write, e.status, e.timeout))
end
