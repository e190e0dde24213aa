-- Whole-table aggregates of raw_interactions, one row, for the Great Expectations suite
-- `raw_interactions` (a 20M-row table is summarised here in one scan instead of being copied
-- into pandas). Besides min/max/missing counts it counts the rows outside the plausible
-- bounds and keeps the first five row_no of each kind of bad row, so that a failed
-- expectation can name the raw rows to blame after the raw table is gone.
create or replace table raw_interactions_summary as
select
    count(*)::bigint as row_count,
    count(*) filter (where user_id is null or user_id = '')::bigint as missing_user_id,
    count(*) filter (where item_id is null or item_id = '')::bigint as missing_item_id,
    count(*) filter (where ts is null)::bigint as missing_ts,
    min(rating)::double as min_rating,
    max(rating)::double as max_rating,
    min(ts)::bigint as min_ts,
    max(ts)::bigint as max_ts,
    count(*) filter (where rating < $rating_low or rating > $rating_high)::bigint as bad_rating_rows,
    count(*) filter (where ts < $ts_low or ts > $ts_high)::bigint as bad_ts_rows,
    coalesce(arg_min(row_no, row_no, 5) filter (where user_id is null or user_id = ''), [])
        as user_id_examples,
    coalesce(arg_min(row_no, row_no, 5) filter (where item_id is null or item_id = ''), [])
        as item_id_examples,
    coalesce(arg_min(row_no, row_no, 5) filter (where ts is null), []) as missing_ts_examples,
    coalesce(arg_min({'row_no': row_no, 'value': rating}, row_no, 5) filter (
        where rating < $rating_low or rating > $rating_high
    ), []) as rating_examples,
    coalesce(arg_min({'row_no': row_no, 'value': ts}, row_no, 5) filter (
        where ts < $ts_low or ts > $ts_high
    ), []) as ts_examples
from raw_interactions
