-- One row per item of the written outputs, for the Great Expectations suite `processed_items`:
-- items.parquet beside the interaction count of each item_idx in interactions.parquet.
-- A full join, so an item_idx used by interactions but missing from items shows up.
create or replace table processed_items as
with counts as (
    select
        item_idx,
        count(*)::bigint as n_interactions
    from read_parquet($interactions_path)
    group by item_idx
),

listed as (
    select item_idx, item_id
    from read_parquet($items_path)
)

select
    coalesce(l.item_idx, c.item_idx) as item_idx,
    l.item_id,
    coalesce(c.n_interactions, 0) as n_interactions
from listed as l
full outer join counts as c on l.item_idx = c.item_idx
order by item_idx
