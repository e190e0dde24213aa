-- Size and shape of the processed dataset, one row (written to stats.json).
create or replace table stats as
with lengths as (
    select
        user_idx,
        count(*) as seq_len
    from interactions
    group by user_idx
)

select
    count(*)::bigint as users,
    (select count(*) from item_map)::bigint as items,
    sum(seq_len)::bigint as interactions,
    avg(seq_len)::double as mean_seq_len,
    quantile_cont(seq_len, 0.5)::double as median_seq_len,
    min(seq_len)::bigint as min_seq_len,
    max(seq_len)::bigint as max_seq_len
from lengths
