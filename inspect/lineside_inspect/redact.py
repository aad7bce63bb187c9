"""Passwords out of text that may be shown or logged: a camera's source (a URL, or a
GStreamer pipeline holding one) and every error message that quotes it.

Applied where such text is made (a camera's last error), not only where it is shown:
the error went on to a 503's body, the PLC's log line and the retained MQTT camera state
unmasked while ``/v1/cameras`` hid it. Hiding too much of an odd URL is the safe way to
err.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from urllib.parse import unquote, urlsplit

MAX_TEXT = 8192  # longer text is cut first: every pattern below then runs in bounded time

# user:password@ of a URL anywhere in the text: the password runs to the last '@' within
# reach (a raw '@', '/' or space in it was shown); the user may hold an '@' too
_USERINFO = re.compile(r"(://[^/:\s]{0,256}):[^\n]{0,512}@")
# a user alone before '@' (an API token given as the user name: http://TOKEN@host/)
_USER_ONLY = re.compile(r"(://)[^/:@\s]{1,256}@")
# a password, token or key given as key=value: in a query string (many IP cameras take
# them there), as a GStreamer property (rtspsrc user-pw=..., souphttpsrc), or in a path
# (XMeye's .../user=admin_password=..._channel=1), quoted or not; and a bare p= (?u=&p=)
_KEYED = re.compile(
    r"(?i)((?:(?:^|[?&;\s/_])[a-z0-9_.\-]{0,64}(?:pass|pwd|pw|psw|pas|token|key|secret|auth"
    r"|sig|cred)[a-z0-9_.\-]{0,64}|(?:^|[?&;\s])p)=)(?:\"[^\"]*\"|'[^']*'|[^&;\s'\"]*)")


def hide_secrets(text: str) -> str:
    """``text`` with URL passwords, users and secret key=value values shown as ``***``."""
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + "…"
    text = _USERINFO.sub(r"\1:***@", text)
    return _KEYED.sub(r"\1***", _USER_ONLY.sub(r"\1***@", text))


def file_path(source: str) -> str:
    """A camera source given as a ``file://`` URL, as the file's path (as it is
    otherwise)."""
    return unquote(urlsplit(source).path) if source.startswith("file://") else source


def shown_source(source: str) -> str:
    """A camera's source as pages and errors show it: a URL or a GStreamer pipeline with
    its secrets hidden, a device by its index, a file or folder by its name alone (the
    server's folders are not a viewer's to read; camera review, session 32)."""
    if source.startswith("file://"):  # a file as a URL is the file
        source = file_path(source)
    elif "://" in source or source.strip().isdigit() or (
            "!" in source and " " in source.strip()):
        return hide_secrets(source)  # a URL, a device, a pipeline (its properties)
    return hide_secrets(PurePath(source).name or source)
