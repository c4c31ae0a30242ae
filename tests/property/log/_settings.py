"""Hypothesis settings for the log property tests (applied per test, not globally)."""

from hypothesis import HealthCheck, settings

LOG_SETTINGS = settings(
    max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
