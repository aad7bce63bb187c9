"""Passwords out of text that may be shown or logged: a camera's source (a URL, or a
GStreamer pipeline holding one) and every error message that quotes it.

Applied where such text is made (a camera's last error), not only where it is shown:
the error went on to a 503's body, the PLC's log line and the retained MQTT camera state
unmasked while ``/v1/cameras`` hid it. Hiding too much of an odd URL is the safe way to
err.
"""

from __future__ import annotations

import re

# user:password@ of a URL anywhere in the text: the password runs to the line's last '@'
# (a raw '@', '/' or space in it was shown); the user may hold an '@' too
_USERINFO = re.compile(r"(://[^/:\s]*):[^\n]*@")
# a password, token or key in a query string (many IP cameras take them there)
_QUERY = re.compile(
    r"(?i)([?&;][a-z0-9_.\-]*(?:pass|pwd|token|key|secret|auth|sig)[a-z0-9_.\-]*=)[^&;\s'\"]*")


def hide_secrets(text: str) -> str:
    """``text`` with URL passwords and secret query values shown as ``***``."""
    return _QUERY.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))
