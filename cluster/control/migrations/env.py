"""Alembic's entry: run the revisions on the connection upgrade() hands over (in its
transaction), never on one of Alembic's own making."""

from __future__ import annotations

from alembic import context

from cluster.core.store import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
