-- Amazon Review Data (2018) per-category reviews (<Category>.json.gz, JSON lines) -> raw
-- interactions. Only the four fields we use are parsed; other keys are ignored.
create or replace table raw_amazon2018_reviews as
with src as (
    select
        *,
        row_number() over () - 1 as row_no
    from read_json(
        $path,
        format = 'newline_delimited', compression = $compression,
        columns = {'reviewerID': 'varchar', 'asin': 'varchar', 'overall': 'double', 'unixReviewTime': 'bigint'}
    )
)
select
    reviewerID as user_id,
    asin as item_id,
    overall as rating,
    unixReviewTime as ts,
    row_no
from src
