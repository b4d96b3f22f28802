"""The admin's web console (``adba console serve``): server-rendered pages over the inventory
and the directory, no JavaScript.

- :mod:`.sessions`: the session table (credentials kept in server memory only, keyed by a
  random id in the cookie), CSRF tokens, idle expiry, the sign-in rate limit;
- :mod:`.chart`: the status-over-time chart as inline SVG, drawn on the server;
- :mod:`.app`: the ASGI application (Starlette) and its pages, Jinja2 templates in
  ``templates/``.

What a signed-in user may see and do in the directory is what the directory grants the
identity they bound as: every directory read and write is made with that user's own bind.
"""

from __future__ import annotations
