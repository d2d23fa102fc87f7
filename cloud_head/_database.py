"""The model registry's SQL database: SQLite by default, PostgreSQL by URL, behind one adapter.

The registry's queries are written once, in the SQL both dialects share (``?`` placeholders,
``ON CONFLICT ... DO UPDATE``). What differs lives here: opening the connection, the
placeholder style, the transaction, and the lock that serialises writers of one pipeline,
so that "the next version number" stays unique when several head processes register at
once. SQLite gets that from ``BEGIN IMMEDIATE`` (one writer per file); PostgreSQL from a
transaction-scoped advisory lock keyed on the pipeline.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from continuum.errors import ConfigError, NotReadyError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[Any, ...]

#: What ``parse_url`` accepts, for error messages.
ACCEPTED_FORMS = (
    "sqlite:///ABSOLUTE/PATH.sqlite3, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
    "(postgres:// too; libpq query parameters such as ?sslmode=require are passed on)"
)
#: libpq gives up on a server that does not answer within this bound (unless the URL says).
CONNECT_TIMEOUT_S = 10
#: The server cancels a statement that runs longer (unless the URL's ``options`` set one):
#: a registry call waiting on a stuck lock or a hung server fails, naming the cause, instead
#: of holding a head's request for ever.
STATEMENT_TIMEOUT_S = 30
_PG_SCHEMES = ("postgresql", "postgres")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def mask_password(url: str) -> str:
    """Return ``url`` with its password (in the user part or a query parameter) as ``***``.

    Works on malformed URLs too: it is what error messages print.
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
        end = min(ends, default=len(rest))
        userinfo, at, hostport = rest[:end].rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            url = f"{scheme}://{user}:***@{hostport}{rest[end:]}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed, validated database URL; ``masked`` is the form safe to print."""

    dialect: Literal["sqlite", "postgresql"]
    url: str = field(repr=False)
    sqlite_path: Path | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def masked(self) -> str:
        """The URL without its password."""
        return mask_password(self.url)

    @property
    def address(self) -> str:
        """``host:port`` of a PostgreSQL server (5432 when the URL names none)."""
        return f"{self.host}:{self.port or 5432}"

    def scrub(self, text: str) -> str:
        """Return ``text`` (a driver's message) with the password removed, should it appear."""
        if self.password:
            text = text.replace(self.password, "***")
        return text


def parse_url(url: str) -> DatabaseURL:
    """Validate a registry URL and return its parts.

    Raises:
        ConfigError: an unknown scheme or a malformed URL; the message names the URL with
            its password masked, and the accepted forms.
    """

    def invalid(why: str) -> ConfigError:
        return ConfigError(f"registry URL {mask_password(url)!r} {why}; expected {ACCEPTED_FORMS}")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:  # a port that is not a number, a broken IPv6 host
        raise invalid(f"is malformed ({error})") from None
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/") or path.endswith("/"):
            raise invalid("is not a SQLite URL with an absolute file path")
        return DatabaseURL("sqlite", url, sqlite_path=Path(path))
    if scheme in _PG_SCHEMES:
        database = unquote(parts.path.lstrip("/"))
        if not parts.hostname:
            raise invalid("names no server host")
        if not database or "/" in database:
            raise invalid("names no database (the path after HOST:PORT/)")
        password = unquote(parts.password) if parts.password else None
        return DatabaseURL(
            "postgresql",
            url,
            host=parts.hostname,
            port=port,
            database=database,
            password=password,
        )
    if not scheme:
        raise invalid("has no scheme")
    raise invalid(f"has an unsupported scheme {parts.scheme!r}")


class Transaction(Protocol):
    """Runs statements inside one open transaction (or one autocommitted read)."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Run one statement with ``?`` placeholders; return its rows ([] for a write)."""
        ...


class Database(ABC):
    """One connection to the registry's database; thread-safe (one lock, like the registry's)."""

    @abstractmethod
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Run one read statement and return its rows."""

    @abstractmethod
    def write(self, lock_key: str, work: Callable[[Transaction], T]) -> T:
        """Run ``work`` in one transaction holding ``lock_key``'s lock; commit, or roll back.

        No other transaction on the same key, in any process that writes this database,
        runs meanwhile: ``work`` may read a maximum and insert the next value.
        """

    @abstractmethod
    def has_table(self, name: str) -> bool:
        """Whether the table ``name`` exists (a read: creating needs more privileges)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""


def open_database(url: str | None, default_sqlite: Path) -> Database:
    """Open the database ``url`` names, or SQLite at ``default_sqlite`` when it is None.

    Raises:
        ConfigError: a bad URL, or PostgreSQL asked for without psycopg installed.
        NotReadyError: the PostgreSQL server cannot be reached.
    """
    if url is None:
        return _SQLite(default_sqlite)
    target = parse_url(url)
    if target.dialect == "sqlite":
        assert target.sqlite_path is not None
        return _SQLite(target.sqlite_path)
    return _PostgreSQL(target)


class _SQLiteTransaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(sql, tuple(args)).fetchall()


class _SQLite(Database):
    """SQLite in WAL mode; ``BEGIN IMMEDIATE`` takes the file's one write lock up front."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def write(self, lock_key: str, work: Callable[[Transaction], T]) -> T:
        # The write lock covers the whole file, so every key is serialised, this one too.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work(_SQLiteTransaction(self._db))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def has_table(self, name: str) -> bool:
        rows = self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return bool(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _pg_sql(sql: str) -> str:
    """Translate ``?`` placeholders to psycopg's ``%s`` (a literal ``%`` becomes ``%%``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PostgreSQLTransaction:
    """Runs statements on a psycopg connection; remembers whether one got through."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self.conn = conn
        self.answered = False

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        cursor = self.conn.execute(_pg_sql(sql), tuple(args))
        rows = cursor.fetchall() if cursor.description is not None else []
        self.answered = True
        return rows


class _PostgreSQL(Database):
    """PostgreSQL through psycopg 3: autocommit reads, explicit transactions for writes.

    A connection the server dropped (a restart, a failover) is replaced once, when the
    operation's first statement finds it dead; a connection lost later in an operation is
    not retried, since its transaction may have committed.
    """

    def __init__(self, target: DatabaseURL) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                f"registry URL {target.masked!r} needs the PostgreSQL driver: "
                "pip install 'psycopg[binary]' (or continuum[postgresql])"
            ) from None
        self._psycopg = psycopg
        self._target = target
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Row] | None = self._connect()

    def _connect(self) -> psycopg.Connection[Row]:
        options: dict[str, Any] = {}
        try:
            given = self._psycopg.conninfo.conninfo_to_dict(self._target.url)
        except self._psycopg.Error as error:
            raise ConfigError(
                f"registry URL {self._target.masked!r} is malformed "
                f"({self._target.scrub(str(error).strip())}); expected {ACCEPTED_FORMS}"
            ) from None
        if "connect_timeout" not in given:
            options["connect_timeout"] = CONNECT_TIMEOUT_S
        server_options = str(given.get("options") or "")
        if "statement_timeout" not in server_options:
            timeout = f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"
            options["options"] = f"{server_options} {timeout}".strip()
        try:
            return self._psycopg.connect(self._target.url, autocommit=True, **options)
        except self._psycopg.OperationalError as error:
            raise NotReadyError(
                f"the model registry's PostgreSQL at {self._target.address} "
                f"(database {self._target.database!r}) could not be reached or refused us: "
                f"{self._reason(error)}; start the server or fix the registry URL "
                f"{self._target.masked!r}"
            ) from error

    def _reason(self, error: BaseException) -> str:
        return self._target.scrub(" ".join(str(error).split())) or type(error).__name__

    def _run(self, work: Callable[[_PostgreSQLTransaction], T]) -> T:
        psycopg = self._psycopg
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                conn = self._conn
                tx = _PostgreSQLTransaction(conn)
                try:
                    return work(tx)
                except psycopg.errors.InsufficientPrivilege as error:
                    raise ConfigError(
                        f"the model registry's PostgreSQL role may not do this: "
                        f"{self._reason(error)}; grant it SELECT, INSERT and UPDATE on "
                        "model_versions and current_versions (the first start also needs "
                        "CREATE on the schema, or the tables made once by a role that has it)"
                    ) from error
                except psycopg.OperationalError as error:
                    lost = conn.broken or conn.closed
                    if lost:
                        conn.close()
                        self._conn = None
                    if lost and not tx.answered and attempt == 1:
                        log.warning(
                            "registry connection to PostgreSQL at %s was lost (%s); reconnecting",
                            self._target.address,
                            self._reason(error),
                        )
                        continue
                    unsure = (
                        " (it may or may not have been committed)" if lost and tx.answered else ""
                    )
                    raise NotReadyError(
                        f"the model registry's PostgreSQL at {self._target.address} failed "
                        f"during the operation{unsure}: {self._reason(error)}; retry"
                    ) from error
        raise AssertionError("unreachable: the second attempt returns or raises")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._run(lambda tx: tx.execute(sql, args))

    def write(self, lock_key: str, work: Callable[[Transaction], T]) -> T:
        def transaction(tx: _PostgreSQLTransaction) -> T:
            with tx.conn.transaction():
                # Held until commit or rollback; hashtextextended gives the 64-bit key.
                tx.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (lock_key,))
                return work(tx)

        return self._run(transaction)

    def has_table(self, name: str) -> bool:
        return bool(self.query("SELECT 1 WHERE to_regclass(?) IS NOT NULL", (name,)))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
