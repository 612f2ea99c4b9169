-- wrk script of benchmarks/run_all.py: every request is a POST of one fixed body, read from
-- the file named by the first script argument (wrk ... URL -- BODY_FILE); headers come from
-- wrk's -H options. Error replies (status 400 and above, wrk's "status" errors) are counted by
-- status code. done() prints one line, "WRK_JSON {...}", with the figures run_all.py reads.

wrk.method = "POST"

local threads = {}
statuses = {} -- per thread: status code -> count of error replies

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.body = file:read("*a")
  file:close()
end

function response(status, headers, body)
  if status > 399 then
    statuses[status] = (statuses[status] or 0) + 1
  end
end

local function status_counts()
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(totals) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local errors = summary.errors
  local function ms(percentile)
    return latency:percentile(percentile) / 1000.0
  end
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"statuses": %s, '
      .. '"latency_ms": {"p50": %.3f, "p90": %.3f, "p99": %.3f, "mean": %.3f, "max": %.3f}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    status_counts(),
    ms(50), ms(90), ms(99), latency.mean / 1000.0, latency.max / 1000.0
  ))
end
