-- Leave-one-out split per user (docs/design.md): last item = test, second-to-last = validation,
-- the rest = training. DuckDB lists are 1-based and slices include both ends. The *_ts and *_rating
-- columns hold each item's timestamp and rating, aligned with the item columns (lite_rec/model/context.py).
create or replace table sequences as
with histories as (
    select
        user_idx,
        list(item_idx order by pos) as history,
        list(ts order by pos) as times,
        list(rating order by pos) as ratings
    from interactions
    group by user_idx
)

select
    h.user_idx,
    u.user_id,
    h.history[1:len(h.history) - 2] as train_seq,
    h.history[len(h.history) - 1] as valid_item_idx,
    h.history[len(h.history)] as test_item_idx,
    h.times[1:len(h.times) - 2] as train_ts,
    h.times[len(h.times) - 1] as valid_ts,
    h.times[len(h.times)] as test_ts,
    h.ratings[1:len(h.ratings) - 2] as train_rating,
    h.ratings[len(h.ratings) - 1] as valid_rating,
    h.ratings[len(h.ratings)] as test_rating
from histories as h
inner join user_map as u using (user_idx)
