-- MovieLens CSV releases (ml-20m, ml-25m, ml-latest[-small]) ratings.csv -> raw interactions.
-- Columns are bound by header name: $columns maps each header field, in file order, to the
-- canonical name and type (userId -> user_id, movieId -> item_id, timestamp -> ts).
create or replace table raw_mlcsv_ratings as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_csv(
        $path,
        sep = ',', header = false, skip = 1, quote = '"', escape = '"', auto_detect = false,
        compression = $compression, columns = $columns
    )
)
select user_id, item_id, rating, ts, row_no
from src
