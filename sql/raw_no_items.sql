-- An empty raw items table, for sources that ship no item file (items then carry no text).
create or replace table raw_no_items as
select
    null::varchar as item_id,
    null::varchar as title,
    null::varchar as genres,
    null::varchar as brand,
    null::varchar as categories,
    null::varchar as description
where false
