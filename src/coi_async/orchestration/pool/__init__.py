"""The warm pool: stopped containers made ahead of time from an image, for storage where creating
one is slow (the `dir` driver copies the whole image every time).

- members.py: what a pool member is (its name, its `user.coi.pool*` keys), which storage makes
  the pool worth having, and the listing of the members.
- take.py: a launch's side: take a member by renaming it to the slot's name (the rename is the
  atomic claim), give it the session's config and devices, start it; ask for a refill after.
- fill.py: make members (one filler at a time per project, under a lock), drop stale or
  half-made ones, drain the pool; the detached refill a launch starts.
"""
