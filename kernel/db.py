"""Declarative base shared by every table, with a naming convention Alembic can diff; and
what an unreachable database looks like (`database_unavailable`)."""

from __future__ import annotations

import asyncpg
import sqlalchemy.exc
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

__all__ = [
    "Base",
    "database_unavailable",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# What PostgreSQL being out of reach looks like from here: the server starting up or
# shutting down (57P0x), no connection slot, a dropped connection, a pool that cannot hand
# out a connection in time. Not a bug in the request: the caller should retry later.
_DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InternalClientError,
    sqlalchemy.exc.TimeoutError,  # the pool's own wait
)
# Socket-level failures (refused, reset, unreachable, timed out) count when the database
# layer raised them or let them through unwrapped (asyncpg's connect does), not when they
# caused, say, a Redis or HTTP error.
_SOCKET = (OSError, TimeoutError)
_DB_LAYER = (sqlalchemy.exc.SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError)


def database_unavailable(exc: BaseException) -> bool:
    """Is `exc`, or what caused it, PostgreSQL being out of reach rather than an error?"""
    todo: list[tuple[BaseException, bool]] = [(exc, True)]
    seen: set[int] = set()
    while todo:
        current, socket_counts = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _DB_UNAVAILABLE):
            return True
        if socket_counts and isinstance(current, _SOCKET):
            return True
        if isinstance(current, asyncpg.InterfaceError) and "closed" in str(current):
            return True
        db_layer = isinstance(current, _DB_LAYER) or type(current).__module__.startswith(
            "sqlalchemy"  # the asyncpg dialect's DB-API exception wrappers
        )
        orig = getattr(current, "orig", None)
        todo += [(e, db_layer) for e in (orig, current.__cause__) if isinstance(e, BaseException)]
    return False
