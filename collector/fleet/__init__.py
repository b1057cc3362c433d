"""Fleet mode: many sidecars shipping their calls to one PostgreSQL store (see the README's "Fleet")."""
