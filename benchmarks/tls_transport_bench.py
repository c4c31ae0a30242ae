"""What a TLS transport costs per 100 KiB moved, apart from dmq (issue 19): one process
sends 1 MiB frames (a 64-byte head and a 1 MiB - 64 body, as a produce request) to
another over loopback; each side's CPU time (user + system) per 100 KiB.

    .venv/bin/python benchmarks/tls_transport_bench.py                  # ~30 s
    .venv/bin/python benchmarks/tls_transport_bench.py --mb 200 --rounds 5 --piece 65536

Modes, measured in turn in every round (so a change of the machine's load falls on all):
- `plaintext`: the event loop's TCP transport, `codec.write_frame` to send, a
  `BufferedProtocol` with a 1 MiB buffer to receive (as dmq's plaintext connections).
- `sslproto`: the event loop's TLS transport (uvloop's or asyncio's, over memory BIOs),
  `codec.write_frame` (pieces of `--piece` bytes) and a buffered protocol: what dmq's TLS
  connections do (`_TlsConnection`, `_TlsClientProtocol`).
- `sslsocket`: a non-blocking `ssl.SSLSocket` (OpenSSL reads and writes the fd itself,
  the socket BIO) driven by `add_reader`/`add_writer`: `send` of `--piece` views,
  `recv_into` the 1 MiB buffer. The candidate for a TLS transport of dmq's own.

TLS 1.3 with a throwaway CA (`dmq.security.certs.CA`), the client verifying the server.
Each run is bounded (`RUN_TIMEOUT_S`); nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import socket
import ssl
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import install_uvloop  # noqa: E402

from dmq.protocol.codec import TLS_WRITE_PIECE_BYTES, write_frame  # noqa: E402

MODES = ("plaintext", "sslproto", "sslsocket")
FRAME = 1024 * 1024
RUN_TIMEOUT_S = 60.0
UNIT = 100 * 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _contexts(certs: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=f"{certs}/ca.pem")
    server.load_cert_chain(f"{certs}/node-1.pem", f"{certs}/node-1.key")
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=f"{certs}/ca.pem")
    return server, client


async def _wait_fd(sock: ssl.SSLSocket, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader,
                                                                        loop.remove_reader)
    add(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        remove(fd)


async def _handshake(sock: ssl.SSLSocket) -> None:
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await _wait_fd(sock, False)
        except ssl.SSLWantWriteError:
            await _wait_fd(sock, True)


def _receiver(mode: str, certs: str, total: int, loop_name: str, port_q: Any,
              out_q: Any) -> None:
    if loop_name == "uvloop":
        install_uvloop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        buf = memoryview(bytearray(1024 * 1024))
        got = 0
        t0 = 0.0
        if mode != "sslsocket":
            transport: list[asyncio.BaseTransport] = []

            class Reader(asyncio.BufferedProtocol):
                def connection_made(self, tr: asyncio.BaseTransport) -> None:
                    transport.append(tr)

                def get_buffer(self, sizehint: int) -> memoryview:
                    return buf

                def buffer_updated(self, nbytes: int) -> None:
                    nonlocal got, t0
                    if not got:
                        t0 = _cpu()
                    got += nbytes
                    if got >= total and not done.done():
                        done.set_result(None)

            ctx = None if mode == "plaintext" else _contexts(certs)[0]
            server = await loop.create_server(Reader, "127.0.0.1", 0, ssl=ctx)
            port_q.put(server.sockets[0].getsockname()[1])
            await done
            t1 = _cpu()
            transport[0].write(b"!")  # type: ignore[attr-defined]
        else:
            lsock = socket.socket()
            lsock.bind(("127.0.0.1", 0))
            lsock.listen()
            port_q.put(lsock.getsockname()[1])
            raw, _ = await loop.sock_accept(lsock)
            sock = _contexts(certs)[0].wrap_socket(raw, server_side=True,
                                                   do_handshake_on_connect=False)
            await _handshake(sock)

            def readable() -> None:
                nonlocal got, t0
                try:
                    while got < total:
                        n = sock.recv_into(buf)
                        if not n:
                            break
                        if not got:
                            t0 = _cpu()
                        got += n
                except ssl.SSLWantReadError:
                    pass
                if got >= total and not done.done():
                    done.set_result(None)

            loop.add_reader(sock.fileno(), readable)
            await done
            t1 = _cpu()
            loop.remove_reader(sock.fileno())
            sock.setblocking(True)
            sock.send(b"!")
        out_q.put(("receiver", t1 - t0))
        await asyncio.sleep(0.2)

    asyncio.run(main())


def _sender(mode: str, certs: str, n_frames: int, piece: int, loop_name: str, port: int,
            out_q: Any) -> None:
    if loop_name == "uvloop":
        install_uvloop()
    frame: list[bytes | memoryview] = [bytes(64), memoryview(os.urandom(FRAME - 64))]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if mode != "sslsocket":
            acked: asyncio.Future[None] = loop.create_future()
            writable = asyncio.Event()
            writable.set()

            class Writer(asyncio.Protocol):
                def pause_writing(self) -> None:
                    writable.clear()

                def resume_writing(self) -> None:
                    writable.set()

                def data_received(self, data: bytes) -> None:
                    if not acked.done():
                        acked.set_result(None)

            ctx = None if mode == "plaintext" else _contexts(certs)[1]
            tr, _ = await loop.create_connection(Writer, "127.0.0.1", port, ssl=ctx)
            t0 = _cpu()
            for _ in range(n_frames):
                write_frame(tr, frame, ctx is not None)
                if not writable.is_set():
                    await writable.wait()
            await acked
        else:
            raw = socket.create_connection(("127.0.0.1", port))
            raw.setblocking(False)
            sock = _contexts(certs)[1].wrap_socket(raw, server_hostname="127.0.0.1",
                                                   do_handshake_on_connect=False)
            await _handshake(sock)
            t0 = _cpu()
            views = [part[o:o + piece] for part in map(memoryview, frame)
                     for o in range(0, len(part), piece)]
            for _ in range(n_frames):
                for view in views:
                    while True:
                        try:
                            sock.send(view)  # all of it, or SSLWantWriteError: again
                            break
                        except ssl.SSLWantWriteError:
                            await _wait_fd(sock, True)
                        except ssl.SSLWantReadError:
                            await _wait_fd(sock, False)
            while True:
                try:
                    if sock.recv(1):
                        break
                except ssl.SSLWantReadError:
                    await _wait_fd(sock, False)
        out_q.put(("sender", _cpu() - t0))

    asyncio.run(main())


def run_once(mode: str, certs: str, mb: int, piece: int, loop_name: str
             ) -> tuple[float, float]:
    """(sender, receiver) CPU microseconds per 100 KiB."""
    ctx = mp.get_context("fork")
    port_q, out_q = ctx.Queue(), ctx.Queue()
    total = mb * FRAME
    recv = ctx.Process(target=_receiver, args=(mode, certs, total, loop_name, port_q, out_q))
    recv.start()
    procs = [recv]
    try:
        port = port_q.get(timeout=RUN_TIMEOUT_S)
        send = ctx.Process(target=_sender,
                           args=(mode, certs, mb, piece, loop_name, port, out_q))
        send.start()
        procs.append(send)
        out = dict(out_q.get(timeout=RUN_TIMEOUT_S) for _ in range(2))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
    units = total / UNIT
    return out["sender"] / units * 1e6, out["receiver"] / units * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=400, help="MiB per run (1 MiB frames)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--piece", type=int, default=TLS_WRITE_PIECE_BYTES,
                    help="bytes per TLS write (writelines group / SSLSocket.send)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (one of {', '.join(MODES)})")
    from dmq.security.certs import CA

    with tempfile.TemporaryDirectory(prefix="dmq-tls-transport-") as certs:
        CA(Path(certs), name="ca", days=2).issue("node-1")
        results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        print(f"{args.mb} MiB of 1 MiB frames per run, piece {args.piece} B, {args.loop}, "
              f"{args.rounds} rounds; CPU us per 100 KiB, sender / receiver", flush=True)
        for r in range(args.rounds):
            for m in modes:
                s, rc = run_once(m, certs, args.mb, args.piece, args.loop)
                results[m].append((s, rc))
                print(f"  round {r + 1} {m:<10} {s:7.1f} / {rc:7.1f}", flush=True)
        print(f"{'mode':<10} {'sender us':>10} {'receiver us':>12}  (medians)")
        for m in modes:
            s = statistics.median(x[0] for x in results[m])
            rc = statistics.median(x[1] for x in results[m])
            print(f"{m:<10} {s:10.1f} {rc:12.1f}")


if __name__ == "__main__":
    main()
