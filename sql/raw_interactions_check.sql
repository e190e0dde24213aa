-- Row count of raw_interactions and, per required field, the first row_no where it is missing
-- (NULL when none is): readers.py turns these into "file, line, field" errors.
select
    count(*) as n_rows,
    min(row_no) filter (where user_id is null) as user_id_missing,
    min(row_no) filter (where item_id is null) as item_id_missing,
    min(row_no) filter (where rating is null) as rating_missing,
    min(row_no) filter (where ts is null) as ts_missing
from raw_interactions
