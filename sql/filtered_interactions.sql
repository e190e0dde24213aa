-- Raw interactions -> the interactions that count (docs/design.md, the data protocol), on integer keys.
-- 1. optional rating threshold: $min_rating NULL keeps every rating;
-- 2. one row per (user, item): the first by timestamp, ties by original row order.
-- The threshold applies first, so a pair's first *qualifying* interaction is the one kept.
-- Only pairs that repeat go through the (sorting) window; the rest pass through an anti join.
create or replace table filtered_interactions as
with rated as materialized (
    select
        u.user_key,
        i.item_key,
        r.rating,
        r.ts,
        r.row_no
    from raw_interactions as r
    inner join user_keys as u using (user_id)
    inner join item_keys as i using (item_id)
    where $min_rating::double is null or r.rating >= $min_rating::double
),

repeated_pairs as (
    select user_key, item_key
    from rated
    group by user_key, item_key
    having count(*) > 1
),

single as (
    select user_key, item_key, rating, ts, row_no
    from rated
    anti join repeated_pairs using (user_key, item_key)
),

first_of_repeated as (
    select user_key, item_key, rating, ts, row_no
    from rated
    semi join repeated_pairs using (user_key, item_key)
    qualify row_number() over (partition by user_key, item_key order by ts, row_no) = 1
)

select user_key, item_key, rating, ts, row_no from single
union all
select user_key, item_key, rating, ts, row_no from first_of_repeated
