"""A private mail lab on loopback: Postfix, an SMTP sink, the milter process.

Used by the tests, the benchmarks and ``gateway demo``; never by the milter.
"""
