-- Raw item_id -> an integer key, numbered in item_id order (see user_keys.sql for why).
create or replace table item_keys as
with items as (
    select distinct item_id
    from raw_interactions
)

select
    item_id,
    (row_number() over (order by item_id))::integer as item_key
from items
