"""Passwords out of text that may be shown or logged: a camera's source (a URL, or a
GStreamer pipeline holding one) and every error message that quotes it.

Applied where such text is made (a camera's last error), not only where it is shown:
the error went on to a 503's body, the PLC's log line and the retained MQTT camera state
unmasked while ``/v1/cameras`` hid it. Hiding too much of an odd URL is the safe way to
err.
"""

from __future__ import annotations

import re

MAX_TEXT = 8192  # longer text is cut first: every pattern below then runs in bounded time

# user:password@ of a URL anywhere in the text: the password runs to the last '@' within
# reach (a raw '@', '/' or space in it was shown); the user may hold an '@' too
_USERINFO = re.compile(r"(://[^/:\s]{0,256}):[^\n]{0,512}@")
# a password, token or key given as key=value: in a query string (many IP cameras take
# them there) or as a GStreamer property (rtspsrc user-pw=..., souphttpsrc), quoted or not
_KEYED = re.compile(
    r"(?i)((?:^|[?&;\s])[a-z0-9_.\-]{0,64}(?:pass|pwd|pw|psw|pas|token|key|secret|auth|sig)"
    r"[a-z0-9_.\-]{0,64}=)(?:\"[^\"]*\"|'[^']*'|[^&;\s'\"]*)")


def hide_secrets(text: str) -> str:
    """``text`` with URL passwords and secret key=value values shown as ``***``."""
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + "…"
    return _KEYED.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))
