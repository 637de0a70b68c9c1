"""mailqueue's consuming side: Dramatiq actors that deliver queued mail."""
