-- Leave-one-out split per user (DESIGN.md): last item = test, second-to-last = validation,
-- the rest = training. DuckDB lists are 1-based and slices include both ends.
create or replace table sequences as
with histories as (
    select
        user_idx,
        list(item_idx order by pos) as history
    from interactions
    group by user_idx
)

select
    h.user_idx,
    u.user_id,
    h.history[1:len(h.history) - 2] as train_seq,
    h.history[len(h.history) - 1] as valid_item_idx,
    h.history[len(h.history)] as test_item_idx
from histories as h
inner join user_map as u using (user_idx)
