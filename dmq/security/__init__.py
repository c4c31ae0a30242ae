"""Security: TLS on every listener and inter-node link (`tls`), SASL SCRAM/PLAIN
(`scram`: mechanisms and credentials; `sasl`: per-listener sessions and throttling),
client settings from Kafka properties (`client_config`) and a private CA for tests
and development (`certs`)."""
