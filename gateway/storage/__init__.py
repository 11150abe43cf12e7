"""The Redis seam shared by quotas and the cache: client construction for every topology
(``client``), the one error tree and its one mapping from redis-py (``errors``), automatic
pipelining of script calls (``batching``) and the breaker that skips a Redis that just timed
out (``breaker``)."""
