#!/usr/bin/python3
"""A D-Bus client for the tssx dbus test (dbus-python): method calls, fd passing both ways,
a signal. Prints a deterministic transcript.

    client.py ADDRESS ROUNDS
"""
import os
import sys

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

IFACE = "org.tssx.Test"


def main():
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    address, rounds = sys.argv[1], int(sys.argv[2])
    bus = dbus.bus.BusConnection(address)
    obj = bus.get_object(IFACE, "/org/tssx/Test")
    test = dbus.Interface(obj, IFACE)
    print("echo:", test.Echo("hello over tssx"))
    total = 0
    for i in range(rounds):
        total += int(test.Sum(list(range(i % 50))))
    print("sum of %d calls:" % rounds, total)
    big = "x" * 200_000
    print("echo big:", len(test.Echo(big)) == len(big))
    # An fd to the service: a pipe holding a few KiB.
    for size in (5, 70_000):
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(r)
            os.write(w, b"p" * size)
            os._exit(0)
        os.close(w)
        print("ReadFd:", test.ReadFd(dbus.types.UnixFd(r)))
        os.close(r)
        os.wait()
    # An fd from the service.
    for word in ("first", "second"):
        fd = test.MakeFd(word).take()
        print("MakeFd:", os.read(fd, 100).decode())
        os.close(fd)
    # Several fds in one call, interleaved with others.
    fds = []
    for i in range(3):
        r, w = os.pipe()
        os.write(w, b"n%d" % i)
        os.close(w)
        fds.append(r)
    print("ReadFd x3:", [str(test.ReadFd(dbus.types.UnixFd(fd))) for fd in fds])
    for fd in fds:
        os.close(fd)
    # A signal.
    loop = GLib.MainLoop()
    got = []

    def on_ping(s):
        got.append(str(s))
        if len(got) == 3:
            loop.quit()

    bus.add_signal_receiver(on_ping, "Ping", IFACE)
    for s in ("a", "b", "c"):
        test.Emit(s)
    GLib.timeout_add_seconds(20, loop.quit)
    loop.run()
    print("signals:", got)
    # After the fds, the connection is still on the rings: the test checks these bytes crossed
    # shared memory.
    print("echo big after the fds:", len(test.Echo(big)) == len(big))
    print("done")


main()
