"""A stateless run's thread records that its deletion is due, until it is done.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-29

A stateless run with ``on_completion: delete`` takes its thread with it when
it ends. A worker does both in one transaction; a cancel or the reaper
deleted the thread in the transaction after the run's end, and a process that
died between the two left the thread. ``threads.delete_after_run`` names the
run whose end the thread waits for, so a sweep finds such threads. Threads
left so before this revision are marked too: a thread not deleted whose only
run (records about runs aside) asked for ``on_completion: delete``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# A thread's first event of its only user run is that run's run.created (seq 1).
MARK_LEFT_SQL = """
UPDATE threads t SET delete_after_run = r.run_id
FROM runs r JOIN events e ON e.thread_id = r.thread_id AND e.run_id = r.run_id AND e.seq = 1
WHERE r.thread_id = t.thread_id AND t.deleted_at IS NULL AND r.command IS NULL
  AND e.data::jsonb ->> 'on_completion' = 'delete'
  AND NOT EXISTS (
      SELECT 1 FROM runs o WHERE o.thread_id = r.thread_id AND o.run_id <> r.run_id
        AND o.record_of IS NULL AND o.command IS DISTINCT FROM 'delete_thread'
  )
"""


def upgrade() -> None:
    op.add_column("threads", sa.Column("delete_after_run", postgresql.UUID(as_uuid=True), nullable=True))
    op.create_index("threads_delete_after_run_idx", "threads", ["thread_id"], postgresql_where=sa.text("delete_after_run IS NOT NULL"))
    op.execute(MARK_LEFT_SQL)


def downgrade() -> None:
    op.drop_index("threads_delete_after_run_idx", table_name="threads")
    op.drop_column("threads", "delete_after_run")
