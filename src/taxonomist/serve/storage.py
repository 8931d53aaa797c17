"""Review decisions in any SQLAlchemy database (SQLite by default, PostgreSQL for a shared team server).

One row per (item, attribute): a later decision replaces an earlier one, so the export always holds the
reviewer's last word. The predicted value and its confidence are kept beside the decision, so accepted
and corrected rows can be told apart and audited without the predictions file.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Container, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from sqlalchemy import DateTime, Float, String, create_engine, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool

from taxonomist.data.catalog import CATEGORY, ID
from taxonomist.io import atomic_write_frame

DEFAULT_DATABASE_URL = "sqlite:///review.db"
ACCEPT = "accept"
CORRECT = "correct"


class _Base(DeclarativeBase):
    pass


class _Decision(_Base):
    __tablename__ = "review_decisions"

    item_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    attribute: Mapped[str] = mapped_column(String(255), primary_key=True)
    category: Mapped[str] = mapped_column(String(255))
    value: Mapped[str] = mapped_column(String(1024))
    action: Mapped[str] = mapped_column(String(16))
    predicted: Mapped[str | None] = mapped_column(String(1024))
    confidence: Mapped[float | None] = mapped_column(Float)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Decision:
    """A reviewer's verdict on one predicted attribute: ``value`` is the label to train on."""

    item_id: str
    category: str
    attribute: str
    value: str
    action: str
    predicted: str | None
    confidence: float | None
    decided_at: datetime

    def to_dict(self) -> dict:
        return {**self.__dict__, "decided_at": self.decided_at.isoformat()}


class DecisionConflict(Exception):
    """The item's decision is not the one the reviewer saw; ``current`` is the stored one (None: none)."""

    def __init__(self, current: Decision | None) -> None:
        super().__init__(current)
        self.current = current


def make_engine(database_url: str) -> Engine:
    """An engine safe to share between request threads, also for in-memory SQLite (tests, demos)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        # One shared connection: each new connection would otherwise open a fresh, empty database.
        return create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    return create_engine(url)


class ReviewStore:
    """Creates its table on first use; safe to use from many threads (one session per call)."""

    def __init__(self, database_url: str = DEFAULT_DATABASE_URL) -> None:
        """A URL that does not parse or a database that cannot be opened is a ValueError naming the URL
        (the CLI words it as a bad parameter), not SQLAlchemy's traceback."""
        try:
            self.engine = make_engine(database_url)
        except ArgumentError as err:  # e.g. a bare file name: review.db
            raise ValueError(
                f"database URL {database_url!r}: {err}; expected an SQLAlchemy URL such as "
                "sqlite:///review.db (a file) or postgresql://host/db"
            ) from err
        try:
            _Base.metadata.create_all(self.engine)
        except OperationalError as err:  # a missing folder, an unreachable server
            self.engine.dispose()
            where = self.engine.url.render_as_string(hide_password=True)
            raise ValueError(f"cannot open the review database {where}: {err.orig}") from err

    def record(
        self,
        item_id: str,
        category: str,
        attribute: str,
        value: str,
        *,
        predicted: str | None,
        confidence: float | None,
        check: bool = False,
        seen: str | None = None,
    ) -> Decision:
        """Store (or replace) the decision for ``(item_id, attribute)``; equal to the prediction = accept.

        ``check``: replace only the decision the reviewer saw, of value ``seen`` (None: none yet), else
        raise :class:`DecisionConflict`, so a save from a stale page (another tab, another reviewer) does
        not silently overwrite a decision its reviewer never saw. The check and the write are one statement.
        """
        row = _Decision(
            item_id=item_id,
            attribute=attribute,
            category=category,
            value=value,
            action=ACCEPT if value == predicted else CORRECT,
            predicted=predicted,
            confidence=confidence,
            decided_at=datetime.now(timezone.utc),
        )
        if check:
            return self._replace(row, seen)
        try:
            self._merge(row)
        except IntegrityError:  # another reviewer inserted the same key first: ours is the later word
            self._merge(row)
        return _public(row)

    def _replace(self, row: _Decision, seen: str | None) -> Decision:
        decision = _public(row)  # before the session that adds the row expires its fields
        try:
            with Session(self.engine) as session, session.begin():
                if seen is None:
                    session.add(row)  # fails on the key if a decision exists
                    return decision
                stale = update(_Decision).where(
                    _Decision.item_id == row.item_id,
                    _Decision.attribute == row.attribute,
                    _Decision.value == seen,
                )
                fields = ("category", "value", "action", "predicted", "confidence", "decided_at")
                if session.execute(stale.values({f: getattr(row, f) for f in fields})).rowcount == 1:
                    return decision
        except IntegrityError:
            pass
        with Session(self.engine) as session:
            current = session.get(_Decision, (row.item_id, row.attribute))
        if current is not None and current.value == decision.value:
            return _public(current)  # the other save picked the same label: nothing is lost
        raise DecisionConflict(_public(current) if current is not None else None)

    def _merge(self, row: _Decision) -> None:
        with Session(self.engine) as session, session.begin():
            session.merge(row)

    def decisions(self, item_ids: Collection[str] | None = None) -> dict[tuple[str, str], Decision]:
        """Every stored decision (or those of ``item_ids``), keyed by (item id, attribute)."""
        query = select(_Decision).order_by(_Decision.item_id, _Decision.attribute)
        if item_ids is not None:
            query = query.where(_Decision.item_id.in_(item_ids))
        with Session(self.engine) as session:
            return {(r.item_id, r.attribute): _public(r) for r in session.scalars(query)}

    def decided(self) -> set[tuple[str, str]]:
        """The (item id, attribute) pairs that have a decision: all a status filter or a progress count
        needs, read as two columns, without loading every decision (seconds for 100k of them)."""
        with Session(self.engine) as session:
            return {(i, a) for i, a in session.execute(select(_Decision.item_id, _Decision.attribute))}

    def training_frame(
        self,
        attributes: Iterable[str] = (),
        *,
        include_accepted: bool = True,
        keys: Container[tuple[str, str]] | None = None,
    ) -> pd.DataFrame:
        """Generic catalog layout: id, category, one column per attribute (empty = not reviewed).

        ``attributes`` are the model's (its schema's or predictions'): each gets a column even before
        anyone reviewed it, so a partial review still loads with the training config's attribute list.
        Accepted predictions are confirmed labels too, so they are exported unless ``include_accepted``
        is false (then only corrections, the rows the model got wrong). ``keys``: only the decisions on
        these (id, attribute) pairs (a review page's predictions: a database shared by the reviews of
        several runs holds the others' too), or every decision (None).
        """
        decisions = [
            d
            for key, d in self.decisions().items()
            if (include_accepted or d.action == CORRECT) and (keys is None or key in keys)
        ]
        columns = sorted({*attributes, *(d.attribute for d in decisions)})
        rows: dict[str, dict[str, str]] = {}
        for d in decisions:
            rows.setdefault(d.item_id, {ID: d.item_id, CATEGORY: d.category})[d.attribute] = d.value
        return pd.DataFrame(list(rows.values()), columns=[ID, CATEGORY, *columns])

    def close(self) -> None:
        self.engine.dispose()


def _public(row: _Decision) -> Decision:
    return Decision(
        row.item_id,
        row.category,
        row.attribute,
        row.value,
        row.action,
        row.predicted,
        row.confidence,
        row.decided_at,
    )


def export_training_rows(
    database_url: str,
    out_path: str | os.PathLike,
    attributes: Iterable[str] = (),
    *,
    include_accepted: bool = True,
) -> int:
    """Write reviewed labels as a CSV that ``taxonomist train`` reads (``catalog.id_column: id``,
    ``catalog.category_column: category``, one column per attribute of ``attributes`` and of the
    decisions); returns the number of rows written."""
    store = ReviewStore(database_url)
    try:
        frame = store.training_frame(attributes, include_accepted=include_accepted)
    finally:
        store.close()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_frame(frame, out_path)
    return len(frame)
