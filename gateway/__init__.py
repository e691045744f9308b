"""Inbound mail filtering gateway: a Postfix milter that explains its verdicts."""

__version__ = "0.1.0"
