-- Amazon (2014) metadata -> raw items. Its lines are Python literals, not JSON, so readers.py
-- converts them (ast.literal_eval, streamed) into the Parquet file read here, with lists
-- already joined. First record of each asin kept; description cut to $max_description_chars.
create or replace table raw_amazon2014_meta as
with src as (
    select item_id, title, brand, categories, description, row_no
    from read_parquet($path)
)

select
    item_id,
    nullif(title, '') as title,
    null::varchar as genres,
    nullif(brand, '') as brand,
    nullif(categories, '') as categories,
    nullif(left(description, $max_description_chars), '') as description,
    row_no
from src
qualify row_number() over (partition by item_id order by row_no) = 1
order by row_no
