-- MovieLens-100K u.item -> the raw items schema. Format: 24 '|'-separated latin-1 fields:
-- id | title | release date | video release date | IMDb URL | 19 genre flags (0/1, in the
-- order of u.genre). The flags become a ', '-joined list of genre names.
create or replace table raw_ml100k_movies as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_csv(
        $path,
        sep = '|', header = false, quote = '', escape = '', auto_detect = false,
        encoding = 'latin-1', compression = $compression,
        columns = {
            'item_id': 'varchar', 'title': 'varchar', 'release_date': 'varchar',
            'video_release_date': 'varchar', 'imdb_url': 'varchar',
            'g_unknown': 'tinyint', 'g_action': 'tinyint', 'g_adventure': 'tinyint',
            'g_animation': 'tinyint', 'g_children': 'tinyint', 'g_comedy': 'tinyint',
            'g_crime': 'tinyint', 'g_documentary': 'tinyint', 'g_drama': 'tinyint',
            'g_fantasy': 'tinyint', 'g_film_noir': 'tinyint', 'g_horror': 'tinyint',
            'g_musical': 'tinyint', 'g_mystery': 'tinyint', 'g_romance': 'tinyint',
            'g_sci_fi': 'tinyint', 'g_thriller': 'tinyint', 'g_war': 'tinyint', 'g_western': 'tinyint'
        }
    )
),

named as (
    select
        item_id,
        title,
        concat_ws(
            ', ',
            case when g_unknown = 1 then 'unknown' end,
            case when g_action = 1 then 'Action' end,
            case when g_adventure = 1 then 'Adventure' end,
            case when g_animation = 1 then 'Animation' end,
            case when g_children = 1 then 'Children''s' end,
            case when g_comedy = 1 then 'Comedy' end,
            case when g_crime = 1 then 'Crime' end,
            case when g_documentary = 1 then 'Documentary' end,
            case when g_drama = 1 then 'Drama' end,
            case when g_fantasy = 1 then 'Fantasy' end,
            case when g_film_noir = 1 then 'Film-Noir' end,
            case when g_horror = 1 then 'Horror' end,
            case when g_musical = 1 then 'Musical' end,
            case when g_mystery = 1 then 'Mystery' end,
            case when g_romance = 1 then 'Romance' end,
            case when g_sci_fi = 1 then 'Sci-Fi' end,
            case when g_thriller = 1 then 'Thriller' end,
            case when g_war = 1 then 'War' end,
            case when g_western = 1 then 'Western' end
        ) as genres,
        row_no
    from src
)

select
    item_id,
    title,
    nullif(genres, '') as genres,
    null::varchar as brand,
    null::varchar as categories,
    null::varchar as description,
    row_no
from named
