#!/usr/bin/python3
"""A TCP proxy on loopback that delays every chunk by a fixed time.

    tools/delay_proxy.py --target HOST:PORT [--listen HOST:PORT]
                         [--delay-ms MS] [--stats FILE]

Each chunk read from one side is written to the other side DELAY
milliseconds after it arrived, in order, in both directions; a round trip
through the proxy therefore takes 2 * DELAY longer.  Chunks are not
serialised behind each other's delay, so the proxy adds latency, not a
bandwidth limit.  Closing one side is passed on after the same delay.

With --listen HOST:0 a free port is chosen.  Once listening, the proxy
prints "LISTENING HOST PORT" on stdout (one line, flushed).  SIGTERM or
SIGINT stops it; with --stats it then writes a JSON object of connection
and byte counts to FILE.  It only ever connects to the target address.
"""

import argparse
import asyncio
import json
import signal
import socket
import sys
import time

CHUNK = 256 * 1024
QUEUE_CHUNKS = 256       # at most this many chunks waiting per direction


class Stats:
    def __init__(self):
        self.connections = 0
        self.to_target = 0
        self.from_target = 0
        self.chunks = 0

    def as_dict(self):
        return {"connections": self.connections,
                "bytes_to_target": self.to_target,
                "bytes_from_target": self.from_target,
                "chunks": self.chunks}


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def pump(reader, writer, delay, stats, upstream):
    """Copies reader to writer, each chunk delay seconds after arrival."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(QUEUE_CHUNKS)

    async def read_side():
        try:
            while True:
                data = await reader.read(CHUNK)
                await queue.put((loop.time() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((loop.time() + delay, b""))

    async def write_side():
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                stats.chunks += 1
                if upstream:
                    stats.to_target += len(data)
                else:
                    stats.from_target += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    reading = asyncio.ensure_future(read_side())
    try:
        await write_side()
    finally:
        reading.cancel()


async def handle(client_reader, client_writer, target, delay, stats):
    stats.connections += 1
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    nodelay(client_writer)
    nodelay(server_writer)
    try:
        await asyncio.gather(
            pump(client_reader, server_writer, delay, stats, True),
            pump(server_reader, client_writer, delay, stats, False))
    finally:
        for w in (client_writer, server_writer):
            try:
                w.close()
            except Exception:
                pass


def host_port(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


async def main_async(args):
    stats = Stats()
    delay = args.delay_ms / 1000.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args.target, delay, stats),
        host=args.listen[0], port=args.listen[1], reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {args.listen[0]} {port}", flush=True)
    started = time.monotonic()
    async with server:
        await stop.wait()
    if args.stats:
        out = stats.as_dict()
        out["seconds"] = round(time.monotonic() - started, 3)
        out["delay_ms_each_way"] = args.delay_ms
        with open(args.stats, "w") as f:
            json.dump(out, f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=host_port, required=True)
    p.add_argument("--listen", type=host_port, default=("127.0.0.1", 0))
    p.add_argument("--delay-ms", type=float, default=10.0,
                   help="added to each direction (default 10)")
    p.add_argument("--stats", help="write byte counts here at exit")
    args = p.parse_args()
    if args.target[0] not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("delay_proxy: the target must be on loopback")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
