"""Python's multiprocessing over Unix stream sockets, for tests/tests/apps/runtimes.rs.

    python3 multiprocessing_py.py METHOD DIR     METHOD: fork, forkserver or spawn

1. A `multiprocessing.connection.Listener` at DIR/pymp-test/listener.sock and 3 worker
   processes, each a `Client` that sends 150 messages of 2 B to 300 KB (`send_bytes`), each
   answered reversed before the next, then passes the read end of a pipe to the listener's
   process with `multiprocessing.reduction.send_handle` (`sendmsg` with `SCM_RIGHTS`, on a
   connection swapped by then), and a pickled summary.
2. A `Manager` (its own listener under `tempfile`'s directory, which the caller points into
   DIR with TMPDIR): a shared dict and queue filled by 3 processes through their proxies.
3. A `Pool` of 3 (forkserver and spawn start their workers through the forkserver's socket or
   pipes).

Prints what was exchanged (digests, counts, the lines read from the passed pipes), never
timings or pids: the plain and swapped runs' outputs must be identical.
"""
import hashlib
import multiprocessing as mp
import os
import pickle
import sys
from multiprocessing import reduction
from multiprocessing.connection import Client, Listener

ROUNDS = 150
WORKERS = 3


def message(worker, i):
    """The i-th message of a worker: a tag byte and 1 B to 300 KB of a worker-specific pattern."""
    return b"D" + bytes([(worker * 31 + i) % 251]) * ((i * 7919) % 300000 + 1)


def echo_client(address, worker):
    conn = Client(address, family="AF_UNIX")
    digest = hashlib.sha256()
    for i in range(ROUNDS):
        data = message(worker, i)
        conn.send_bytes(data)
        back = conn.recv_bytes()
        if back != data[:0:-1]:
            sys.exit(f"worker {worker}: answer {i} differs")
        digest.update(back)
    r, w = os.pipe()
    os.write(w, f"worker {worker} through a passed pipe\n".encode())
    os.close(w)
    conn.send_bytes(b"H")
    reduction.send_handle(conn, r, os.getppid())
    os.close(r)
    conn.send(("done", worker, digest.hexdigest()))
    conn.close()


def serve_one(conn, out):
    """Answers one worker until its EOF; collects its pipe's line and summary into `out`."""
    while True:
        try:
            m = conn.recv_bytes()
        except EOFError:
            break
        if m == b"H":
            fd = reduction.recv_handle(conn)
            out.append(os.read(fd, 200).decode().strip())
            os.close(fd)
        elif m.startswith(b"D"):
            conn.send_bytes(m[:0:-1])
        else:
            out.append(repr(pickle.loads(m)))
    conn.close()


def fill(shared, queue, k):
    for i in range(200):
        shared[(k, i)] = "x" * (i * 37 % 1000)
        queue.put((k, i))


def main():
    method, directory = sys.argv[1], sys.argv[2]
    mp.set_start_method(method)
    address = os.path.join(directory, "pymp-test", "listener.sock")
    os.makedirs(os.path.dirname(address), exist_ok=True)
    out = []
    with Listener(address, family="AF_UNIX") as listener:
        workers = [mp.Process(target=echo_client, args=(address, k)) for k in range(WORKERS)]
        for p in workers:
            p.start()
        for _ in workers:
            serve_one(listener.accept(), out)
        for p in workers:
            p.join()
            out.append(f"worker exit {p.exitcode}")
    print("\n".join(sorted(out)))
    with mp.Manager() as manager:
        shared, queue = manager.dict(), manager.Queue()
        fillers = [mp.Process(target=fill, args=(shared, queue, k)) for k in range(3)]
        for p in fillers:
            p.start()
        for p in fillers:
            p.join()
        items = sorted(queue.get() for _ in range(600))
        digest = hashlib.sha256(repr(sorted(shared.items())).encode()).hexdigest()
        print(f"manager: {len(shared)} keys, sha256 {digest}, {len(items)} queued, exits {[p.exitcode for p in fillers]}")
    with mp.Pool(3) as pool:
        print(f"pool: {sum(pool.map(len, [b'x' * i for i in range(2000)]))}")


if __name__ == "__main__":
    main()
