-- MovieLens-1M ratings.dat -> the raw interactions schema (docs/data.md).
-- Format: UserID::MovieID::Rating::Timestamp, latin-1, no header, no quoting.
-- row_no: row_number() over () runs as a streaming window that keeps the file's order.
create or replace table raw_ml1m_ratings as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_csv(
        $path,
        sep = '::', header = false, quote = '', escape = '', auto_detect = false,
        encoding = 'latin-1', compression = $compression,
        columns = {'user_id': 'varchar', 'item_id': 'varchar', 'rating': 'double', 'ts': 'bigint'}
    )
)
select user_id, item_id, rating, ts, row_no
from src
