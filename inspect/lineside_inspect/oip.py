"""Open Inference Protocol (KServe v2) pieces both of Lineside's sides of it use: the
server's ``/v2`` and the remote-inference client (``runtime/remote.py``)."""

from __future__ import annotations


def flat_data(value: object, levels: int) -> object:
    """A tensor's ``data`` flattened (row-major): the protocol lets its elements come
    nested as the tensor's shape (``ndarray.tolist()``) or flat. Up to ``levels`` levels
    of rows above the elements are flattened; every row of a level must be as long as its
    siblings (ValueError), the shape checks the count later. Anything that is not a list
    of rows comes back as it is, for the caller's own type check."""
    level = value
    for _ in range(levels):
        if not (type(level) is list and level and type(level[0]) is list):
            break
        width = len(level[0])
        if any(type(row) is not list or len(row) != width for row in level):
            raise ValueError("'data' nested as rows of unequal lengths: send it flat "
                             "(row-major) or nested as its shape")
        level = [v for row in level for v in row]
    return level
