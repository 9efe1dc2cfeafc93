"""An echo server and a client over a Unix stream socket with Python's asyncio (selector event
loop: epoll, non-blocking recv/send, accept), for tests/tests/apps/runtimes.rs.

    python3 echo_asyncio.py server PATH          echo every byte back, close on EOF
    python3 echo_asyncio.py client PATH ROUNDS   ROUNDS messages of mixed sizes (1 B to 300 KB),
                                                 each echoed in full before the next, then EOF

The client prints what it sent and got (counts and SHA-256), never timings: the plain and
swapped runs' outputs must be identical.
"""
import asyncio
import hashlib
import os
import random
import signal
import sys


async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


async def serve(path):
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(echo, path)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


async def client(path, rounds):
    reader, writer = await asyncio.open_unix_connection(path)
    rng = random.Random(7)
    out, back = hashlib.sha256(), hashlib.sha256()
    sent = got = 0
    for _ in range(rounds):
        msg = rng.randbytes(rng.choice([1, 64, 1000, 70000, 300000]) + rng.randrange(50))
        out.update(msg)
        sent += len(msg)
        writer.write(msg)
        await writer.drain()
        while got < sent:
            data = await reader.read(1 << 20)
            if not data:
                break
            back.update(data)
            got += len(data)
    writer.write_eof()
    tail = await reader.read()
    writer.close()
    same = "identical" if out.digest() == back.digest() else "DIFFERENT"
    print(f"rounds {rounds}, sent {sent}, got {got}, after EOF {len(tail)}, echo {same}")


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    asyncio.run(serve(path) if mode == "server" else client(path, int(sys.argv[3])))
