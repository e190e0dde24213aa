-- MovieLens-100K u.data -> the raw interactions schema. Format: user, item, rating, timestamp,
-- tab-separated, no header.
create or replace table raw_ml100k_ratings as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_csv(
        $path,
        sep = '\t', header = false, quote = '', escape = '', auto_detect = false,
        encoding = 'latin-1', compression = $compression,
        columns = {'user_id': 'varchar', 'item_id': 'varchar', 'rating': 'double', 'ts': 'bigint'}
    )
)
select user_id, item_id, rating, ts, row_no
from src
