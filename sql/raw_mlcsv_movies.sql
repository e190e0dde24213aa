-- MovieLens CSV releases movies.csv (movieId,title,genres; titles quoted when they hold commas)
-- -> raw items. '(no genres listed)' is the dump's marker for an empty list.
create or replace table raw_mlcsv_movies as
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
select
    item_id,
    title,
    case when genres = '(no genres listed)' then null else nullif(replace(genres, '|', ', '), '') end as genres,
    null::varchar as brand,
    null::varchar as categories,
    null::varchar as description,
    row_no
from src
