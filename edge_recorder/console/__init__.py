"""``edge-recorder serve``: a read-only web console over a collector store and its index.

``web`` holds the application (pages, plot data, downloads, the token and header guard),
``series`` the min/max envelope read from session files, ``serve`` the command (safe
defaults, then uvicorn). Needs the ``[console]`` extra: Starlette, uvicorn, Jinja2, numpy.
"""
