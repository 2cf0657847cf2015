"""accounts management commands."""
