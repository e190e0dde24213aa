"""Small, reusable test helpers: a loopback HTTP server, a PEP 503 package index, and writers of
tiny raw files in each real dump format (import as ``tests.helpers.<module>``)."""
