"""Security: TLS on every listener and inter-node link (`dmq.security.tls`)."""
