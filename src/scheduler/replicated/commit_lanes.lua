-- Writes the lanes a decision changed if no lane it depends on has changed since it read them.
--
-- A replica reads the lanes a decision depends on (each with its version),
-- applies the scheduler's rules to that copy, then calls this script with
-- every lane the decision depends on and the new state of each lane it
-- changed: a plan's lane (and its tier's, marked for the day's re-check of
-- a learned 0), a grant's own lane (and its tier's, where a 429's lesson
-- spreads). The script compares every version and writes only if all
-- still match. Redis runs a script alone, so two replicas can never both
-- take the same capacity; the one that finds a version moved re-reads and
-- decides again.
--
-- KEYS:                  the lanes the decision depends on (those it writes among them)
-- ARGV[i]:               the version read of KEYS[i] (0: the lane did not exist)
-- ARGV[#KEYS + 1]:       how long Redis keeps a written lane (ms)
-- then, in pairs:        which of KEYS to write (1-based), its new state
-- Returns 1 if written, 0 if a version had moved (then nothing is written).
local n = #KEYS
for i = 1, n do
  local version = tonumber(redis.call('HGET', KEYS[i], 'v')) or 0
  if version ~= tonumber(ARGV[i]) then
    return 0
  end
end
local ttl = ARGV[n + 1]
for w = n + 2, #ARGV, 2 do
  local lane = KEYS[tonumber(ARGV[w])]
  redis.call('HINCRBY', lane, 'v', 1)
  redis.call('HSET', lane, 'state', ARGV[w + 1])
  redis.call('PEXPIRE', lane, ttl)
end
return 1
