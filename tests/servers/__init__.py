"""Start and stop real servers for tests, on loopback, with temporary data directories."""
