-- Start of the k-core loop: the (user, item) edges of the filtered interactions. The loop
-- works on these two integer columns only (8 bytes a row instead of 32): the k-core removes
-- users and items, and an edge goes exactly when one of its ends goes, so the surviving rows
-- are recovered at the end from the surviving users and items (kcore_interactions.sql).
create or replace table kcore_edges as
select user_key, item_key
from filtered_interactions
