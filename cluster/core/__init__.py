"""The platform's base: the store, storage, tenants, users, tokens, reservations.

It imports no concept above it."""
