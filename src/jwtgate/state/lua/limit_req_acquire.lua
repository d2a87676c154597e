-- limit_req: account one request in every bucket, or in none (jwtgate.state.redis).
--
-- The same arithmetic as src/jwtgate/state/bucket.py (NGINX's ngx_http_limit_req_module.c):
-- integers in milliseconds and thousandths of a request; a bucket is the string "excess:last".
--
-- KEYS, per bucket i: [2i-1] the bucket key, [2i] its zone's LRU index (a sorted set of keys
--   by last use). A bucket key is its zone's prefix followed by the request key (ARGV member).
-- ARGV[1]: now in ms, or "" for the server's TIME (one clock for every gateway: no skew).
-- ARGV, per bucket i from 2 + 4(i-1): rate (thousandths/s), burst (thousandths), capacity
--   (keys in the zone), member (the request key).
-- Returns {0, excess_1, ..., excess_n} when accepted and accounted, or {i, excess_1, ...,
-- excess_i} when bucket i is the first over its burst; then nothing was accounted anywhere.

local now
if ARGV[1] ~= '' then
    now = tonumber(ARGV[1])
else
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local IDLE_MS = 60000
local n = #KEYS / 2
local excess, last, fresh = {}, {}, {}

-- 1. look every bucket up; the first one over its burst rejects the request
for i = 1, n do
    local a = 2 + (i - 1) * 4
    local rate, burst = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local e, l = 0, now
    local raw = redis.call('GET', KEYS[2 * i - 1])
    if raw then
        local sep = string.find(raw, ':', 1, true)
        local se, sl = tonumber(string.sub(raw, 1, sep - 1)), tonumber(string.sub(raw, sep + 1))
        local ms = now - sl
        if ms < -60000 then ms = 1 elseif ms < 0 then ms = 0 end
        e = se - math.floor(rate * ms / 1000) + 1000
        if e < 0 then e = 0 end
        if ms == 0 then l = sl end
        -- NGINX moves a looked-up state to the head of its LRU queue, rejected or not
        redis.call('ZADD', KEYS[2 * i], now, ARGV[a + 3])
    else
        fresh[i] = true
    end
    excess[i], last[i] = e, l
    if e > burst then
        local out = {i}
        for j = 1, i do out[j + 1] = excess[j] end
        return out
    end
end

-- 2. account every bucket
local out = {0}
for i = 1, n do
    local a = 2 + (i - 1) * 4
    local rate, capacity, member = tonumber(ARGV[a]), tonumber(ARGV[a + 2]), ARGV[a + 3]
    local bucket, index = KEYS[2 * i - 1], KEYS[2 * i]
    local e, l = excess[i], last[i]
    if fresh[i] then
        -- a full zone forgets its least recently used keys first
        local over = redis.call('ZCARD', index) - capacity + 1
        if over > 0 then
            local prefix = string.sub(bucket, 1, #bucket - #member)
            local old = redis.call('ZPOPMIN', index, over)
            for j = 1, #old, 2 do
                redis.call('DEL', prefix .. old[j])
            end
        end
        redis.call('ZADD', index, now, member)
    end
    -- from then on the state acts exactly like no state (bucket.ttl_ms): let it expire
    local quiet = math.floor(((e + 1000) * 1000 + rate - 1) / rate)
    local ttl = l - now + quiet
    if ttl < IDLE_MS then ttl = IDLE_MS end
    redis.call('SET', bucket, string.format('%d:%d', e, l), 'PX', ttl)
    local left = redis.call('PTTL', index)
    if left < ttl then
        redis.call('PEXPIRE', index, ttl)
    end
    out[i + 1] = e
end
return out
