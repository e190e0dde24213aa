-- MovieLens-1M movies.dat -> the raw items schema. Format: MovieID::Title::Genres, latin-1,
-- genres '|'-separated (joined with ', ' here, as every list in raw_items).
create or replace table raw_ml1m_movies as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_csv(
        $path,
        sep = '::', header = false, quote = '', escape = '', auto_detect = false,
        encoding = 'latin-1', compression = $compression,
        columns = {'item_id': 'varchar', 'title': 'varchar', 'genres': 'varchar'}
    )
)
select
    item_id,
    title,
    nullif(replace(genres, '|', ', '), '') as genres,
    null::varchar as brand,
    null::varchar as categories,
    null::varchar as description,
    row_no
from src
