"""Per-epoch custom metrics, as a spec reported them (ncloud.training.report)."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    steps.add_column(op.get_bind(), "epoch_metrics", "custom", "TEXT")
