-- Writes one lane's new state if no lane the decision read has changed since.
--
-- A replica reads the lanes a decision depends on (each with its version),
-- applies the scheduler's rules to that copy, then calls this script: it
-- compares every version and writes only if all still match. Redis runs a
-- script alone, so two replicas can never both take the same capacity; the
-- one that finds a version moved re-reads and decides again.
--
-- KEYS:               the lanes the decision read
-- ARGV[i]:            the version read of KEYS[i] (0: the lane did not exist)
-- ARGV[#KEYS + 1]:    which of KEYS to write (1-based)
-- ARGV[#KEYS + 2]:    its new state
-- ARGV[#KEYS + 3]:    how long Redis keeps it (ms)
-- Returns 1 if written, 0 if a version had moved.
local n = #KEYS
for i = 1, n do
  local version = tonumber(redis.call('HGET', KEYS[i], 'v')) or 0
  if version ~= tonumber(ARGV[i]) then
    return 0
  end
end
local lane = KEYS[tonumber(ARGV[n + 1])]
redis.call('HINCRBY', lane, 'v', 1)
redis.call('HSET', lane, 'state', ARGV[n + 2])
redis.call('PEXPIRE', lane, ARGV[n + 3])
return 1
