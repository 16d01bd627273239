-- wrk script: POST /api/reservations, a buyer new to the drop on every request (the ids in the file
-- BUYERS, one per line, shared out between the threads), one hot drop.
--   wrk -t THREADS -c CONNECTIONS -d SECONDS --latency -s reserve.lua URL -- DROP_ID BUYERS THREADS [PATH]
-- PATH (default /api/reservations) sends the same requests elsewhere: to an unknown path, they measure
-- the adapter's cheapest answer, a 404. Prints, after wrk's own report, how the answers split: 201 (a new
-- hold), 409 (sold out), 404, and anything else.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("index", #threads)
end

function init(args)
    drop = args[1]
    local file, count = args[2], tonumber(args[3])
    path = args[4] or "/api/reservations"
    buyers, next_buyer = {}, 1
    local line_number = 0
    for line in io.lines(file) do
        -- Thread k of n takes lines k, k + n, k + 2n, ...: no two threads send the same buyer.
        if line_number % count == index - 1 then
            buyers[#buyers + 1] = line
        end
        line_number = line_number + 1
    end
    created, sold_out, not_found, other, ran_out = 0, 0, 0, 0, 0
end

function request()
    local buyer = buyers[next_buyer]
    if buyer == nil then
        -- More requests than buyers: the last one again (a retry, answered with its own hold).
        ran_out = ran_out + 1
        buyer = buyers[#buyers]
    else
        next_buyer = next_buyer + 1
    end
    return wrk.format("POST", path, { ["Content-Type"] = "application/json" },
        '{"userId":"' .. buyer .. '","dropId":"' .. drop .. '"}')
end

function response(status, headers, body)
    if status == 201 then
        created = created + 1
    elseif status == 409 then
        sold_out = sold_out + 1
    elseif status == 404 then
        not_found = not_found + 1
    else
        other = other + 1
    end
end

function done(summary, latency, requests)
    local made, refused, missing, others, short = 0, 0, 0, 0, 0
    for _, thread in ipairs(threads) do
        made = made + thread:get("created")
        refused = refused + thread:get("sold_out")
        missing = missing + thread:get("not_found")
        others = others + thread:get("other")
        short = short + thread:get("ran_out")
    end
    local seconds = summary.duration / 1e6
    io.write(string.format("result: holds=%d holds_per_s=%.0f sold_out_per_s=%.0f not_found_per_s=%.0f other_answers=%d p50_ms=%.1f p99_ms=%.1f buyers_ran_out=%d errors=%d\n",
        made, made / seconds, refused / seconds, missing / seconds, others, latency:percentile(50) / 1000,
        latency:percentile(99) / 1000, short,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
