-- Raw item_id -> dense item_idx 1..N (0 is padding), in order of each item's first appearance
-- in the filtered, time-ordered interaction stream; ties by user (user_key is in user_id
-- order), then by original row.
create or replace table item_map as
with first_seen as (
    select
        item_key,
        min({'ts': ts, 'user_key': user_key, 'row_no': row_no}) as first_event
    from kcore_interactions
    group by item_key
)

select
    f.item_key,
    i.item_id,
    (row_number() over (order by f.first_event, f.item_key))::integer as item_idx
from first_seen as f
inner join item_keys as i using (item_key)
