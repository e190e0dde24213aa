-- Amazon Review Data (2018) metadata (meta_<Category>.json.gz, JSON lines) -> raw items.
-- `category` is a list, `description` a list or a string: lists are joined with ', '.
-- The dump repeats some asins: the first record of each is kept. The description is cut to
-- $max_description_chars characters (item text stays bounded).
create or replace table raw_amazon2018_meta as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_json(
        $path,
        format = 'newline_delimited', compression = $compression,
        columns = {'asin': 'varchar', 'title': 'varchar', 'brand': 'varchar', 'category': 'json', 'description': 'json'}
    )
),

flat as (
    select
        asin as item_id,
        title,
        brand,
        case json_type(category)
            when 'ARRAY' then array_to_string(cast(category as varchar[]), ', ')
            when 'NULL' then null
            else category ->> '$'
        end as categories,
        case json_type(description)
            when 'ARRAY' then array_to_string(cast(description as varchar[]), ', ')
            when 'NULL' then null
            else description ->> '$'
        end as description,
        row_no
    from src
)

select
    item_id,
    nullif(title, '') as title,
    null::varchar as genres,
    nullif(brand, '') as brand,
    nullif(categories, '') as categories,
    nullif(left(description, $max_description_chars), '') as description,
    row_no
from flat
qualify row_number() over (partition by item_id order by row_no) = 1
order by row_no
