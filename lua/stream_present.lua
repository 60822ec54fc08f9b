-- Which of some entry ids are still in a stream (an orders stream holds an entry exactly
-- while it is unsettled): one call instead of an XRANGE per id, and no entry sent back.
-- KEYS[1] the stream; ARGV the entry ids.
-- Returns one integer per id, in order: 1 if the entry is in the stream, else 0.
local present = {}
for i, id in ipairs(ARGV) do
  present[i] = #redis.call('xrange', KEYS[1], id, id) > 0 and 1 or 0
end
return present
