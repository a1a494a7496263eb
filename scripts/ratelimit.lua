-- A sliding-window rate limiter on a sorted set, the Redis counterpart of stead's ratelimiter:
-- drop timestamps older than the window, deny when `limit` remain, else record now.
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, now, time[1] .. '.' .. time[2])
redis.call('PEXPIRE', key, window)
return 1
