-- wrk script for latency at a fixed offered load: every connection pauses
-- between a response and its next request, for a random time with the
-- first script argument as its mean in milliseconds, so 64 connections
-- pausing 12 ms on average offer about 5,000 requests/s, well under every
-- setup's capacity. The pauses are exponentially distributed (each
-- connection a Poisson source, as independent clients are): with a fixed
-- pause the connections stay in lock-step and every request waits behind
-- a burst of 63 others, which measures the burst, not the proxy. wrk
-- waits whole milliseconds (it truncates), and it starts a request's latency
-- clock when it writes the request, so the pause is not counted.
-- An optional second argument names a file of tokens (one per line) sent
-- round-robin in Cf-Access-Jwt-Assertion, as sidecar_tokens.lua does;
-- without it the request is wrk's own (with any -H headers).
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local pause = 0
local tokens = {}
local i = 0
function init(args)
  pause = tonumber(args[1]) or 0
  math.randomseed(os.time() * 1000 + (id or 0))
  if args[2] then
    for line in io.lines(args[2]) do
      if #line > 0 then tokens[#tokens + 1] = line end
    end
    i = (id or 0) * math.floor(#tokens / 4)
  end
end

function delay()
  return -math.log(1 - math.random()) * pause
end

function request()
  if #tokens == 0 then return wrk.format() end
  i = i + 1
  if i > #tokens then i = 1 end
  return wrk.format("GET", "/", { ["Cf-Access-Jwt-Assertion"] = tokens[i] })
end
