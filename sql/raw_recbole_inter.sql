-- RecBole atomic .inter file (typed header such as user_id:token<TAB>item_id:token<TAB>
-- rating:float<TAB>timestamp:float; CRLF or LF) -> raw interactions. $columns maps every
-- header field, in file order, to a name and type chosen by header name (readers.py); the
-- empty union below supplies a NULL column for an optional field the file lacks (rating).
create or replace table raw_recbole_inter as
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
        null::varchar as user_id,
        null::varchar as item_id,
        null::double as rating,
        null::double as ts,
        null::bigint as row_no
    where false
)

select
    user_id,
    item_id,
    rating,
    cast(ts as bigint) as ts,
    row_no
from filled
