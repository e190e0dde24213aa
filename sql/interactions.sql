-- The k-core interactions with raw ids, dense indices and each user's chronological position
-- (pos 0-based; ties in ts broken by original row order, so the order is reproducible).
-- pos is numbered on the narrow integer rows before the raw-id strings are joined on.
create or replace table interactions as
with positioned as (
    select
        user_key,
        item_key,
        rating,
        ts,
        row_no,
        (row_number() over (partition by user_key order by ts, row_no) - 1)::integer as pos
    from kcore_interactions
)

select
    u.user_id,
    i.item_id,
    p.rating,
    p.ts,
    p.row_no,
    u.user_idx,
    i.item_idx,
    p.pos
from positioned as p
inner join user_map as u using (user_key)
inner join item_map as i using (item_key)
