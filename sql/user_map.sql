-- Raw user_id -> dense user_idx 0..U-1, in order of the raw user_id (docs/data.md); user_key
-- is numbered in user_id order, so ordering by it is ordering by user_id.
create or replace table user_map as
with kept as (
    select distinct user_key
    from kcore_interactions
)

select
    kept.user_key,
    u.user_id,
    (row_number() over (order by kept.user_key) - 1)::integer as user_idx
from kept
inner join user_keys as u using (user_key)
