"""The demo service, its traffic generator and the cleanup report behind ``exitstack-otel demo``."""
