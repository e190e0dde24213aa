-- RecBole atomic .item file -> raw items. Header fields are mapped by name (readers.py):
-- movie_title/title -> title, genre/class/genres -> genres (a space-separated token sequence,
-- joined with ', ' here), brand, categories, description; absent ones come out NULL.
-- release_year, where present, is appended to the title as "Title (1995)": the GroupLens files
-- carry the year in the title, and the item text should not depend on which copy was read.
create or replace table raw_recbole_item as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_csv(
        $path,
        sep = '\t', header = false, skip = 1, quote = '', escape = '', auto_detect = false,
        compression = $compression, columns = $columns
    )
),

filled as (
    from src
    union all by name
    select
        null::varchar as item_id,
        null::varchar as title,
        null::varchar as year,
        null::varchar as genres,
        null::varchar as brand,
        null::varchar as categories,
        null::varchar as description,
        null::bigint as row_no
    where false
)

select
    item_id,
    case
        when nullif(trim(year), '') is not null and nullif(title, '') is not null
            then title || ' (' || regexp_replace(trim(year), '\.0+$', '') || ')'
        else nullif(title, '')
    end as title,
    nullif(regexp_replace(trim(genres), '\s+', ', ', 'g'), '') as genres,
    nullif(brand, '') as brand,
    nullif(categories, '') as categories,
    nullif(left(description, $max_description_chars), '') as description,
    row_no
from filled
order by row_no
