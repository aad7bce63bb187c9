"""Reading a small file an operator named on the command line (a config, a recipe, a key).

``Path.read_text()`` waited forever on a FIFO nobody writes to (its open blocks until a
writer comes), read ``/dev/zero`` until memory ran out, and a file not in UTF-8 ended in
a ``UnicodeDecodeError`` traceback. Here each is one :class:`ConfigError` naming the file.
A pipe that is written (``--config <(envsubst < serve.yaml)``) is still read, and so is a
FIFO whose writer comes within :data:`FIFO_WAIT_S` of us.
"""

from __future__ import annotations

import os
import select
import stat
from pathlib import Path
from typing import Any

import yaml

from lineside_inspect.errors import ConfigError

MAX_TEXT_BYTES = 16 * 1024 * 1024  # far over any config; a link to a device stops here
# a FIFO with no writer yet is waited for this long: a script may start us before its
# writer (``mkfifo cfg; lineside serve --config cfg & render > cfg``), which a check of
# no writer at the open refused (review, session 37) and the blocking open waited for
# without end
FIFO_WAIT_S = 10.0


def read_bytes(path: str | Path, what: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of ``path``, a regular file or a pipe being written, at most ``limit``.
    ``what`` names the file in errors ("config", "recipe", "signing key")."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once rather than waiting
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise ConfigError(f"{path}: cannot read {what} (not a regular file)")
        chunks: list[bytes] = []
        if stat.S_ISFIFO(mode) and not _writer_came(fd, chunks):
            raise ConfigError(f"{path}: cannot read {what} (a FIFO nothing was written to "
                              f"within {FIFO_WAIT_S:g} s)")
        os.set_blocking(fd, True)  # a pipe's writer may be slower than us: wait for it
        size = sum(map(len, chunks))
        while size <= limit and (chunk := os.read(fd, 1 << 16)):  # writer gone: end of file
            size += len(chunk)
            chunks.append(chunk)
        if size > limit:
            raise ConfigError(f"{path}: cannot read {what} (over {limit >> 20} MiB)")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    finally:
        os.close(fd)
    if not chunks and stat.S_ISFIFO(mode):  # read as an empty config, it started a server
        raise ConfigError(f"{path}: cannot read {what} (a FIFO nothing was written to)")
    return b"".join(chunks)


def _writer_came(fd: int, chunks: list[bytes]) -> bool:
    """Whether the FIFO opened without blocking at ``fd`` has or had a writer, waiting up
    to :data:`FIFO_WAIT_S` for one; what was read meanwhile goes into ``chunks``. Without
    a writer a read is an end of file at once; with one that wrote nothing yet, EAGAIN."""
    try:
        first = os.read(fd, 1 << 16)
    except BlockingIOError:  # its writer is there, slower than us: the read waits for it
        return True
    if first:
        chunks.append(first)
        return True
    poller = select.poll()  # readable once a writer wrote, or came and left
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(FIFO_WAIT_S * 1000)))


def read_text(path: str | Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """:func:`read_bytes` as UTF-8 text (a byte-order mark dropped)."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: a {what} is UTF-8 text; this file is not (byte "
                          f"{data[exc.start]:#04x} at offset {exc.start})") from None


def load_yaml(text: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """``yaml.load`` with a safe loader, raising only ``yaml.YAMLError``: a document
    nested thousands deep (``[[[[...``) raised RecursionError, and an integer of more than
    4300 digits or a date such as 2024-02-30 ValueError, each a traceback where callers
    catch YAMLError (a config, a recipe, a data.yaml from a downloaded set)."""
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader (or a subclass): no tags run code
    except RecursionError:  # the composer recurses once per level of nesting
        raise yaml.YAMLError("nested too deeply to read (thousands of levels)") from None
    except ValueError as exc:  # int()'s digit limit, a date that is no date
        raise yaml.YAMLError(f"a value that cannot be read: {str(exc).split(';')[0]}") from None
