"""The platform core: store, tenants, users, tokens, reservations, controller, lifecycle."""
