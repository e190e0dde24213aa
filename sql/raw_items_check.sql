-- Row count of raw_items and the first row_no whose item_id is missing (NULL when none is).
select
    count(*) as n_rows,
    min(row_no) filter (where item_id is null) as item_id_missing
from raw_items
