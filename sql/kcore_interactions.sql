-- The filtered interactions inside the k-core fixed point: every row between a surviving user
-- and a surviving item (the k-core is the sub-table induced by its users and items).
create or replace table kcore_interactions as
with kept_users as materialized (
    select distinct user_key
    from kcore_edges
),

kept_items as materialized (
    select distinct item_key
    from kcore_edges
)

select f.user_key, f.item_key, f.rating, f.ts, f.row_no
from filtered_interactions as f
semi join kept_users using (user_key)
semi join kept_items using (item_key)
