"""The tests' and benchmarks' own lab: servers nothing else needs (a DNS
server that misbehaves on purpose, one that answers for any name, a private
PostgreSQL). What ``gateway demo`` needs too stays in :mod:`gateway.lab`."""
