"""Live state shared by several workers and replicas through Redis (``state: {backend:
redis}``): breakers and statistics (`RedisHealth`), pending decisions and the outcome rules
(`RedisBookkeeping`), experiment tallies (`RedisTallies`), over one `RedisStore` connection
that group-commits writes and falls back to local state when Redis is unreachable.

Imports `serving`'s interfaces (health, bookkeeping, experiments) and the `redis` client.
"""

from serving.shared.bookkeeping import RedisBookkeeping
from serving.shared.health import RedisHealth
from serving.shared.store import RedisStore, StateUnavailable
from serving.shared.tallies import RedisTallies

__all__ = ["RedisBookkeeping", "RedisHealth", "RedisStore", "RedisTallies", "StateUnavailable"]
