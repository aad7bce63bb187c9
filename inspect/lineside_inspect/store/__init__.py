"""The inspection store (SQLAlchemy: SQLite by default, PostgreSQL by URL) and reviews."""

from lineside_inspect.store.lock import DataDirLock
from lineside_inspect.store.store import ACTIONS, Store

__all__ = ["ACTIONS", "DataDirLock", "Store"]
