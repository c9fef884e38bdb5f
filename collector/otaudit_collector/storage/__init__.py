"""Storage: PostgreSQL, the only place an accepted event lives."""
