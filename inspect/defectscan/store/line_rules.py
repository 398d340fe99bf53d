"""Line controls set from the console: pause/resume, and threshold rules that override the file.

Every function takes a keyword-only ``session`` and never commits. A monitor reads
:func:`line_paused` and :func:`effective_thresholds` between batches; the console writes them
with :func:`set_line_paused` and :func:`apply_threshold_rule`. Rules are versioned per line and
class: applying one adds a row (who, why, when); the newest version is the rule.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from defectscan.errors import StoreError
from defectscan.store.schema import LineControl, ThresholdRule, utcnow

__all__ = [
    "apply_threshold_rule",
    "effective_thresholds",
    "line_controls",
    "line_paused",
    "set_line_paused",
    "threshold_history",
]


def line_paused(line: str, *, session: Session) -> bool:
    """Whether ``line``'s monitor is told to stop claiming."""
    row = session.get(LineControl, line)
    return bool(row and row.paused)


def line_controls(*, session: Session) -> dict[str, LineControl]:
    """Every line's control row, by line."""
    return {row.line: row for row in session.scalars(select(LineControl))}


def set_line_paused(line: str, paused: bool, *, who: str, session: Session) -> LineControl:
    """Pause or resume ``line`` (one row per line, updated in place)."""
    if not line or len(line) > 64:
        msg = f"line name {line!r}: 1 to 64 characters"
        raise StoreError(msg)
    row = session.get(LineControl, line)
    if row is None:
        row = LineControl(line=line)
        session.add(row)
    row.paused = paused
    row.changed_by = who
    row.changed_at = utcnow()
    session.flush()
    return row


def apply_threshold_rule(
    line: str, class_name: str, threshold: float, *, who: str, reason: str, session: Session
) -> ThresholdRule:
    """A new version of ``line``'s threshold for ``class_name``; it overrides the plant file."""
    if not 0.0 <= threshold <= 1.0:
        msg = f"threshold {threshold} is not a probability in [0, 1]"
        raise StoreError(msg)
    if not reason.strip():
        msg = "a threshold rule needs a reason: it is recorded with the rule"
        raise StoreError(msg)
    last = session.scalar(
        select(func.max(ThresholdRule.version)).where(
            ThresholdRule.line == line, ThresholdRule.class_name == class_name
        )
    )
    rule = ThresholdRule(
        line=line,
        class_name=class_name,
        threshold=float(threshold),
        version=int(last or 0) + 1,
        created_by=who,
        reason=reason.strip(),
    )
    session.add(rule)
    session.flush()
    return rule


def effective_thresholds(line: str, *, session: Session) -> dict[str, ThresholdRule]:
    """The newest rule of each class of ``line`` (empty: the plant file's rule holds)."""
    rows = session.scalars(
        select(ThresholdRule)
        .where(ThresholdRule.line == line)
        .order_by(ThresholdRule.class_name, ThresholdRule.version)
    )
    return {row.class_name: row for row in rows}  # later versions overwrite earlier ones


def threshold_history(line: str, *, session: Session, limit: int = 50) -> list[ThresholdRule]:
    """``line``'s rules, newest first."""
    return list(
        session.scalars(
            select(ThresholdRule)
            .where(ThresholdRule.line == line)
            .order_by(ThresholdRule.id.desc())
            .limit(limit)
        )
    )
