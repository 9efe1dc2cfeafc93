#!/usr/bin/python3
"""D-Bus round trips for `cargo xtask report`: method calls through dbus-daemon to service.py.

    bench.py ADDRESS CALLS

Prints two numbers, microseconds per call: Echo of a 64-byte string, and ReadFd passing a pipe
(an fd with SCM_RIGHTS each call, both hops through the daemon). Calls Quit at the end.
"""
import os
import sys
import time

import dbus

IFACE = "org.tssx.Test"


def main():
    address, calls = sys.argv[1], int(sys.argv[2])
    bus = dbus.bus.BusConnection(address)
    test = dbus.Interface(bus.get_object(IFACE, "/org/tssx/Test"), IFACE)
    word = "w" * 64
    for _ in range(200):
        test.Echo(word)
    start = time.perf_counter()
    for _ in range(calls):
        test.Echo(word)
    echo = (time.perf_counter() - start) / calls * 1e6
    r, w = os.pipe()
    os.close(w)
    start = time.perf_counter()
    for _ in range(calls // 4):
        test.ReadFd(dbus.types.UnixFd(r))
    fd = (time.perf_counter() - start) / (calls // 4) * 1e6
    os.close(r)
    test.Quit()
    print("%.2f %.2f" % (echo, fd))


main()
