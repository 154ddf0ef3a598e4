"""Whether a Dask scheduler answers at an address: a bounded handshake in Dask's own protocol.

Opening a TCP connection is not enough: a Dask client pointed at an HTTP server reads the reply as
a message length, then hangs or dies allocating exabytes. This speaks just enough of Dask's
protocol, with every length bounded, to tell a scheduler from anything else within seconds.
"""

from __future__ import annotations

import struct
import time
from typing import Optional

# Dask's TCP comm (distributed/comm/tcp.py, protocol/core.py): a message is an 8-byte length, then
# that many bytes: a frame count, one 8-byte length per frame, the frames; the first frame is
# msgpack. Dask packs native-endian ("Q"); every platform it runs on is little-endian. On connect
# both sides send a handshake dict ({"compression", "python", "pickle-protocol"}) and read the
# other's (comm/core.py, connect() and Listener.on_connection).
DASK_MAX_MESSAGE = 1 << 20  # a handshake or an identity reply without workers is ~300 bytes
DASK_DEFAULT_PORT = 8786
_NOT_THE_SCHEDULER = "give the scheduler's address (port 8786 by default; the dashboard's 8787 is HTTP)"


class _NotDask(Exception):
    """The peer does not speak Dask's comm protocol; the message says what it sent instead."""


def _dask_message(payload: dict) -> bytes:
    import msgpack

    body = msgpack.packb(payload, use_bin_type=True)
    return struct.pack("<QQQ", 16 + len(body), 1, len(body)) + body


def _dask_probe_messages() -> bytes:
    """Our handshake, then ``identity`` (workers left out, so the reply stays small), asking the
    server to close the comm after replying, as a Dask client does when it is done."""
    import pickle
    import sys

    handshake = {"compression": None, "python": list(sys.version_info[:3]), "pickle-protocol": pickle.HIGHEST_PROTOCOL,
                 # Extra keys are ignored by Dask; this blank line makes an HTTP server (a dashboard
                 # given by mistake) see the end of a request and answer or hang up at once, instead
                 # of waiting out the timeout for more of a request line.
                 "probe": "masactrl-animate validate\r\n\r\n"}
    identity = {"op": "identity", "n_workers": 0, "reply": True, "close": True}
    return _dask_message(handshake) + _dask_message(identity)


def _recv_exactly(sock, count: int, deadline: float) -> bytes:
    """``count`` bytes from ``sock`` before ``deadline`` (TimeoutError), or _NotDask when it hangs up."""
    data = bytearray()
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(count - len(data), 1 << 16))
        if not chunk:
            raise _NotDask(f"it closed the connection after {len(data)} of {count} bytes" if data
                           else "it closed the connection without a Dask handshake")
        data += chunk
    return bytes(data)


def _read_dask_message(sock, deadline: float):
    """One Dask message from ``sock``: lengths checked against DASK_MAX_MESSAGE before anything
    is allocated (an HTTP reply read as a length asks for exabytes), first frame msgpack-decoded."""
    import msgpack

    head = _recv_exactly(sock, 8, deadline)
    (total,) = struct.unpack("<Q", head)
    if not 16 <= total <= DASK_MAX_MESSAGE:
        text = all(32 <= b < 127 or b in b"\r\n\t" for b in head)
        what = " (text: an HTTP server or another service?)" if text else ""
        raise _NotDask(f"it answered {head!r}{what}, which is not the length of a Dask message")
    body = _recv_exactly(sock, total, deadline)
    (frames,) = struct.unpack_from("<Q", body)
    start = 8 * (frames + 1)
    if not 1 <= frames <= 64 or start > total:
        raise _NotDask(f"its reply claims {frames} frames, which is not a Dask message")
    (first,) = struct.unpack_from("<Q", body, 8)
    if first > total - start:
        raise _NotDask("its reply's frames are longer than the reply, which is not a Dask message")
    try:
        return msgpack.unpackb(body[start:start + first], raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - any decoding failure means "not Dask"
        raise _NotDask("its reply is not msgpack, so not a Dask message") from None


def _dask_server_kind(sock, deadline: float) -> str:
    """'Scheduler', 'Worker', ... as the server's ``identity`` says; _NotDask for anything else."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    sock.sendall(_dask_probe_messages())
    handshake = _read_dask_message(sock, deadline)
    if not isinstance(handshake, dict) or "pickle-protocol" not in handshake:
        raise _NotDask(f"its first message is not a Dask handshake ({type(handshake).__name__})")
    identity = _read_dask_message(sock, deadline)
    if not isinstance(identity, dict) or not identity.get("type"):
        # Only a scheduler's identity takes n_workers: a worker or nanny answers with an error.
        raise _NotDask("it is another Dask server (a worker or a nanny?): it refused the scheduler's identity request")
    return str(identity["type"])


def dask_problem(address: Optional[str], timeout: float = 5.0) -> Optional[str]:
    """Why no Dask scheduler answers at ``address``, or None: within ``timeout`` s in all, a
    TCP connection, Dask's handshake and the server's ``identity``, which must say 'Scheduler'.

    Opening a connection is not enough: a Dask client pointed at an HTTP server reads
    the reply as a message length, then hangs or dies allocating exabytes. This speaks just
    enough of Dask's protocol, with every length bounded, to tell a scheduler from anything else.
    """
    if not address:
        return None
    import socket
    from urllib.parse import urlsplit

    text = address if "://" in address else f"tcp://{address}"
    parts = urlsplit(text)
    try:
        host, port = parts.hostname, parts.port or DASK_DEFAULT_PORT
    except ValueError:  # a port that is not a number
        return f"{address!r} is not host:port; write e.g. tcp://scheduler:8786"
    if parts.scheme not in ("tcp", "tls") or not host:
        return None  # other transports (ucx, inproc) cannot be probed cheaply
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = f"timed out after {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return f"no Dask scheduler answers at {address} ({reason}); start it (`dask scheduler`) or fix the address"
    with sock:
        if parts.scheme == "tls":
            return None  # the handshake needs the cluster's certificates: an open port is all we check
        try:
            kind = _dask_server_kind(sock, deadline)
        except TimeoutError:
            return (f"{address} is not a Dask scheduler (or one too busy to answer): it sent no Dask handshake "
                    f"within {timeout:g} s; {_NOT_THE_SCHEDULER}")
        except _NotDask as exc:
            return f"{address} is not a Dask scheduler: {exc}; {_NOT_THE_SCHEDULER}"
        except OSError as exc:  # reset halfway through
            return (f"{address} is not a Dask scheduler: the connection broke during Dask's handshake "
                    f"({exc.strerror or exc}); {_NOT_THE_SCHEDULER}")
    if kind != "Scheduler":
        return f"{address} is a Dask {kind}, not a Dask scheduler; {_NOT_THE_SCHEDULER}"
    return None
