"""The desired-state book signs every document it publishes, marks rollbacks, re-issues
documents before they expire, and reads a book written before desired states were signed."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cloud_head.desired_state import DESIRED_VALIDITY_S, DesiredStateBook, signed_desired_state
from continuum import signing
from continuum.errors import ArtifactError, ConfigError
from continuum.wire import topics
from continuum.wire.messages import DesiredModel, DesiredState

TENANT = "acme"


def entry(version: str, *, rollback: bool = False) -> DesiredModel:
    return DesiredModel(
        model="inspector",
        version=version,
        sha256="ab" * 32,
        signature="cd" * 64,
        size_bytes=10,
        chunk_size=10,
        chunks=1,
        rollback=rollback,
    )


class Clock:
    def __init__(self, now: float = 1_763_800_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Book:
    """A book on a SQLite file, with what it published parsed and the key that verifies it."""

    def __init__(self, path: Path, **options: object) -> None:
        self.private, self.public = signing.generate_keypair()
        self.published: list[tuple[str, DesiredState]] = []
        self.clock = Clock()
        self.path = path
        self.book = self.open(**options)

    def open(self, **options: object) -> DesiredStateBook:
        return DesiredStateBook(
            self.path,
            TENANT,
            lambda topic, payload: self.published.append(
                (topic, DesiredState.from_payload(payload))
            ),
            private_key_pem=self.private,
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )

    def last(self) -> DesiredState:
        return self.published[-1][1]

    def verify(self, state: DesiredState) -> None:
        assert state.signature is not None
        signing.verify_desired(self.public, state.model_dump(mode="json"), state.signature)


@pytest.fixture
def book(tmp_path: Path) -> Book:
    return Book(tmp_path / "desired.sqlite3")


class TestSignedDocuments:
    def test_every_published_desired_state_is_signed_whole_and_fresh(self, book: Book) -> None:
        state = book.book.assign("cam-1", "inspect", entry("v1"))

        topic, published = book.published[-1]
        assert topic == topics.node_desired(TENANT, "cam-1")
        assert published == state
        assert (published.tenant, published.node) == (TENANT, "cam-1")
        assert published.generation == int(book.clock.now * 1_000_000)  # the issue time, in µs
        assert published.issued_at == book.clock.now
        assert published.expires_at == book.clock.now + DESIRED_VALIDITY_S
        book.verify(published)
        forged = published.model_copy(update={"generation": 2**63 - 1})
        with pytest.raises(ArtifactError, match="bad signature"):
            book.verify(forged)

    def test_each_assignment_is_the_next_generation_and_get_returns_what_was_published(
        self, book: Book
    ) -> None:
        start = int(book.clock.now * 1_000_000)
        book.book.assign("cam-1", "inspect", entry("v1"))
        book.book.assign("cam-1", "count", entry("v4"))  # within the same microsecond
        book.book.assign("cam-2", "inspect", entry("v1"))

        assert [s.generation for _, s in book.published] == [start, start + 1, start]
        assert book.book.get("cam-1") == book.published[1][1]
        assert set(book.book.get("cam-1").pipelines) == {"inspect", "count"}  # type: ignore[union-attr]
        assert book.book.serving_target("cam-1", "count") == "v4"
        assert book.book.get("cam-9") is None

    def test_signed_desired_state_is_what_the_book_publishes(self, book: Book) -> None:
        state = book.book.assign("cam-1", "inspect", entry("v1"))
        again = signed_desired_state(
            book.private,
            tenant=TENANT,
            node="cam-1",
            pipelines=state.pipelines,
            generation=state.generation,
            issued_at=book.clock.now,
        )
        assert again == state  # Ed25519 signatures are deterministic

    def test_a_key_that_is_not_a_private_key_or_a_short_validity_is_refused(
        self, tmp_path: Path, book: Book
    ) -> None:
        with pytest.raises(ArtifactError, match="malformed private key"):
            DesiredStateBook(tmp_path / "x.sqlite3", TENANT, print, private_key_pem=book.public)
        with pytest.raises(ConfigError, match="validity_s is 10"):
            book.open(validity_s=10)


class TestRollbackMark:
    def test_an_older_version_than_the_book_gave_before_is_marked_rollback(
        self, book: Book
    ) -> None:
        book.book.assign("cam-1", "inspect", entry("v9"))
        assert book.last().pipelines["inspect"].rollback is False
        book.book.assign("cam-1", "inspect", entry("v10"))  # natural order: v10 after v9
        assert book.last().pipelines["inspect"].rollback is False
        book.book.assign("cam-1", "inspect", entry("v9"))
        assert book.last().pipelines["inspect"].rollback is True
        book.verify(book.last())

    def test_the_mark_stays_while_the_version_rolled_back_to_is_sent_again(
        self, book: Book
    ) -> None:
        book.book.assign("cam-1", "inspect", entry("v2"))
        book.book.assign("cam-1", "inspect", entry("v1"))
        book.book.assign("cam-1", "inspect", entry("v1"))  # sent again (a node that joined)
        book.book.assign("cam-1", "count", entry("v5"))  # another pipeline's change
        assert book.last().pipelines["inspect"].rollback is True
        book.book.assign("cam-1", "inspect", entry("v3"))  # forward again: no mark
        assert book.last().pipelines["inspect"].rollback is False

    def test_a_caller_may_mark_an_entry_rollback_itself(self, book: Book) -> None:
        book.book.assign("cam-1", "inspect", entry("v1", rollback=True))
        assert book.last().pipelines["inspect"].rollback is True


class TestGenerations:
    def test_generations_rise_across_books_and_a_book_started_afresh(self, tmp_path: Path) -> None:
        """One book per pipeline controller, and a book may be lost: an agent takes only a
        generation above the last it took, from whichever book."""
        inspect, count = Book(tmp_path / "inspect.sqlite3"), Book(tmp_path / "count.sqlite3")
        generations = []
        for _ in range(3):
            inspect.book.assign("cam-1", "inspect", entry("v1"))
            inspect.clock.now += 0.001
            count.clock.now = inspect.clock.now
            count.book.assign("cam-1", "count", entry("v1"))
            inspect.clock.now += 0.001
            generations += [inspect.last().generation, count.last().generation]
        assert generations == sorted(set(generations))
        inspect.book.close()
        (tmp_path / "inspect.sqlite3").unlink()
        afresh = inspect.open()
        afresh.assign("cam-1", "inspect", entry("v2"))
        assert inspect.last().generation > generations[-1]

    def test_a_clock_that_went_back_still_gives_the_next_generation(self, book: Book) -> None:
        book.book.assign("cam-1", "inspect", entry("v1"))
        first = book.last().generation
        book.clock.now -= 3600.0
        book.book.assign("cam-1", "inspect", entry("v2"))
        assert book.last().generation == first + 1


class TestRefresh:
    def test_documents_past_half_their_validity_are_reissued_with_the_same_orders(
        self, tmp_path: Path
    ) -> None:
        made = Book(tmp_path / "desired.sqlite3", validity_s=3600.0)
        made.book.assign("cam-1", "inspect", entry("v1"))
        made.clock.now += 1000.0
        made.book.assign("cam-2", "inspect", entry("v2"))
        made.clock.now += 799.0
        assert made.book.refresh_expiring() == []  # cam-1 is at 1799 s of 3600
        made.clock.now += 1.0
        assert made.book.refresh_expiring() == ["cam-1"]
        fresh = made.last()
        assert (fresh.node, fresh.issued_at) == ("cam-1", made.clock.now)
        assert fresh.generation == int(made.clock.now * 1_000_000)
        assert fresh.pipelines["inspect"].version == "v1"
        made.verify(fresh)
        assert made.book.refresh_expiring() == []


class TestOlderBooks:
    def test_a_book_from_before_signing_is_read_and_its_next_document_signed(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "desired.sqlite3"
        db = sqlite3.connect(path)
        db.execute(
            "CREATE TABLE desired (tenant TEXT, node TEXT, generation INTEGER, "
            "pipelines TEXT, PRIMARY KEY (tenant, node))"
        )
        old = {"inspect": entry("v3").model_dump(mode="json", exclude={"rollback"})}
        db.execute("INSERT INTO desired VALUES (?,?,?,?)", (TENANT, "cam-1", 7, json.dumps(old)))
        db.commit()
        db.close()

        made = Book(path)
        assert made.book.serving_target("cam-1", "inspect") == "v3"
        assert made.book.refresh_expiring() == ["cam-1"]  # never published signed: now
        assert made.last().generation == int(made.clock.now * 1_000_000)  # above 7
        made.verify(made.last())
        made.book.assign("cam-1", "inspect", entry("v2"))
        assert made.last().pipelines["inspect"].rollback is True
