"""Building blocks of the training/validation stream (see :mod:`anatplane_dist.data.stream`).

Split by job: ``shardspec`` (which tar files, with which weights and sizes), ``shardlist``
(which worker reads which shard, seeded per epoch), ``decode`` (bytes -> checked arrays ->
batches), ``stats`` (counters that cross worker processes, rate-limited warnings).
"""
