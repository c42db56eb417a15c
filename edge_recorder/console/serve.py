"""The ``serve`` command: check that it is safe to listen, open the index, run uvicorn.

Loopback by default. Listening on any other address needs a token (``--token`` or, better,
``--token-file``, which keeps it out of ``ps``); without one the command refuses to start.
Requests must name the console in ``Host``: localhost, 127.0.0.1, [::1], the ``--bind``
address, or a name given with ``--allow-host`` (DNS rebinding defence).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from pathlib import Path

from edge_recorder.errors import UsageError
from edge_recorder.query.index import open_index

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")  # safe in a header and a cookie


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The token from ``--token`` or ``--token-file`` (first line), checked; None if neither."""
    if token is not None and token_file is not None:
        raise UsageError("give --token or --token-file, not both")
    if token_file is not None:
        try:
            lines = token_file.read_text().splitlines()
        except OSError as exc:
            raise UsageError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--token-file {token_file}: not a text file") from None
        token = lines[0].strip() if lines else ""
    if token is not None and not TOKEN_RE.match(token):
        raise UsageError("the token must be 16-256 characters from A-Z a-z 0-9 . _ ~ + / = - "
                         "(e.g. the output of: openssl rand -hex 24)")
    return token


def check_bind(bind: str, token: str | None) -> None:
    if not is_loopback(bind) and token is None:
        raise UsageError(f"--bind {bind} would let other machines read every session; give "
                         "--token-file (or --token), or bind to 127.0.0.1")


def allowed_hosts(bind: str, allow_host: list[str]) -> list[str]:
    """The ``Host`` names accepted besides loopback: the bind address (unless it is a
    wildcard such as 0.0.0.0) and every ``--allow-host``, each checked."""
    from edge_recorder.console.web import check_host

    try:
        wildcard = ipaddress.ip_address(bind).is_unspecified
    except ValueError:
        wildcard = False
    hosts = []
    for option, name in ([] if wildcard else [("--bind", bind)]) + [
            ("--allow-host", name) for name in allow_host]:
        try:
            hosts.append(check_host(name))
        except ValueError as exc:
            raise UsageError(f"{option} {exc}") from None
    return hosts


def serve(store: Path, *, index_url: str | None = None, bind: str = "127.0.0.1",
          port: int = 8080, token: str | None = None, token_file: Path | None = None,
          allow_host: list[str] | None = None) -> int:
    token = read_token(token, token_file)
    check_bind(bind, token)
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: 0-65535")
    try:
        import uvicorn

        from edge_recorder.console.web import LOOPBACK_HOSTS, Catalog, build_app
    except ImportError as exc:
        raise UsageError(f"serve needs the console extra ({exc.name} is missing): "
                         "pip install 'edge-recorder[console]'") from None
    hosts = allowed_hosts(bind, allow_host or [])
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
        sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
    if not store.is_dir():
        sock.close()
        raise UsageError(f"--store {store}: no such directory")
    catalog = Catalog(open_index(store, index_url, check_same_thread=False), store)
    try:
        catalog.sync()
        catalog.start()
        with catalog.use() as index:
            n = index.count()
        host, real_port = sock.getsockname()[:2]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        where = f"http://{shown}:{real_port}/"
        print(f"edge-recorder console on {where} ({n} session(s) in {store}; read-only"
              f"{'; open it once as ' + where + '?token=<your token>' if token else ''}); "
              "Ctrl-C stops it", flush=True)
        extra = "".join(", " + h for h in hosts if h not in LOOPBACK_HOSTS)
        print(f"accepting requests whose Host is localhost, 127.0.0.1, [::1]{extra} "
              "(--allow-host NAME adds one)", flush=True)
        config = uvicorn.Config(build_app(catalog, token=token, hosts=hosts), log_config=None,
                                access_log=False, lifespan="off", timeout_graceful_shutdown=3)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        catalog.close()
        sock.close()
    return 0
