-- Amazon (2014) ratings-only CSV (ratings_<Category>.csv: user,item,rating,timestamp; no
-- header) -> raw interactions.
create or replace table raw_amazon2014_ratings as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_csv(
        $path,
        sep = ',', header = false, quote = '"', escape = '"', auto_detect = false,
        compression = $compression,
        columns = {'user_id': 'varchar', 'item_id': 'varchar', 'rating': 'double', 'ts': 'bigint'}
    )
)
select user_id, item_id, rating, ts, row_no
from src
