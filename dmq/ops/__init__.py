"""Operations surface of a node: HTTP status, health and Prometheus metrics.

This package sits above the role layers and only reads their state through the hooks
a role service offers (`metrics()`, `ready()`, `http_routes()`); it never changes it.
"""
