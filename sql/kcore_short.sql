-- One k-core check over kcore_edges: the users and items that are still short of
-- interactions. Users need max($k_core, $min_user_interactions) (leave-one-out needs
-- train/valid/test), items need $k_core. Empty = the fixed point is reached.
create or replace table kcore_short as
with short_users as (
    select
        'user' as side,
        user_key as key
    from kcore_edges
    group by user_key
    having count(*) < greatest($k_core, $min_user_interactions)
),

short_items as (
    select
        'item' as side,
        item_key as key
    from kcore_edges
    group by item_key
    having count(*) < $k_core
)

select side, key from short_users
union all
select side, key from short_items
