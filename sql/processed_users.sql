-- One row per user of the written outputs, for the Great Expectations suite `processed_users`:
-- interactions per user (from interactions.parquet) beside the split (from sequences.parquet).
-- A full join, so a user present in only one of the files shows up with NULLs.
create or replace table processed_users as
with counts as (
    select
        user_idx,
        count(*)::bigint as n_interactions
    from read_parquet($interactions_path)
    group by user_idx
),

splits as (
    select
        user_idx,
        len(train_seq)::bigint as train_len,
        len(train_ts)::bigint as train_ts_len,
        len(train_rating)::bigint as train_rating_len,
        list_sort(train_ts) = train_ts and (len(train_ts) = 0 or train_ts[-1] <= valid_ts) and valid_ts <= test_ts
            as ts_ordered,
        valid_item_idx,
        test_item_idx
    from read_parquet($sequences_path)
)

select
    coalesce(c.user_idx, s.user_idx) as user_idx,
    coalesce(c.n_interactions, 0) as n_interactions,
    s.train_len,
    coalesce(c.n_interactions, 0) - 2 as expected_train_len,
    s.train_ts_len,
    s.train_rating_len,
    s.ts_ordered,
    s.valid_item_idx,
    s.test_item_idx
from counts as c
full outer join splits as s on c.user_idx = s.user_idx
order by user_idx
