-- Text fields of the kept items only, in item_idx order. A kept item without a metadata row
-- keeps its place with NULL text (the item-text stage renders missing fields as "").
create or replace table items as
with kept as (
    select item_idx, item_id
    from item_map
)

select
    kept.item_idx,
    kept.item_id,
    r.title,
    r.genres,
    r.brand,
    r.categories,
    r.description
from kept
left join raw_items as r using (item_id)
