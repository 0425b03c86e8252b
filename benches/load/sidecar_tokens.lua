-- wrk script: each request carries a different token from the file given
-- as the first script argument (one per line); threads start at different
-- offsets so they do not share tokens.
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local tokens = {}
local i = 0
function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  i = (id or 0) * math.floor(#tokens / 4)
end

function request()
  i = i + 1
  if i > #tokens then i = 1 end
  return wrk.format("GET", "/", { ["Cf-Access-Jwt-Assertion"] = tokens[i] })
end
