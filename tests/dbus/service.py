#!/usr/bin/python3
"""A D-Bus service for the tssx dbus test (dbus-python, GLib main loop).

    service.py ADDRESS

Owns org.tssx.Test on the bus at ADDRESS and serves /org/tssx/Test: Echo, Sum, ReadFd (reads
a passed fd), MakeFd (answers a pipe's read end holding a word), Emit (emits the Ping signal),
Quit. Prints "ready" once the name is owned, then the calls it served.
"""
import os
import sys

import dbus
import dbus.service
import dbus.mainloop.glib
from gi.repository import GLib

IFACE = "org.tssx.Test"


class Test(dbus.service.Object):
    def __init__(self, bus, loop):
        super().__init__(bus, "/org/tssx/Test")
        self.loop = loop

    @dbus.service.method(IFACE, in_signature="s", out_signature="s")
    def Echo(self, s):
        return s

    @dbus.service.method(IFACE, in_signature="ai", out_signature="x")
    def Sum(self, values):
        return sum(values)

    @dbus.service.method(IFACE, in_signature="h", out_signature="s")
    def ReadFd(self, fd):
        fd = fd.take()
        data = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        os.close(fd)
        return "%d bytes, first %r" % (len(data), data[:16].decode())

    @dbus.service.method(IFACE, in_signature="s", out_signature="h")
    def MakeFd(self, word):
        r, w = os.pipe()
        os.write(w, word.encode())
        os.close(w)
        fd = dbus.types.UnixFd(r)
        os.close(r)
        return fd

    @dbus.service.signal(IFACE, signature="s")
    def Ping(self, s):
        pass

    @dbus.service.method(IFACE, in_signature="s", out_signature="")
    def Emit(self, s):
        self.Ping(s)

    @dbus.service.method(IFACE, in_signature="", out_signature="")
    def Quit(self):
        GLib.idle_add(self.loop.quit)


def main():
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(sys.argv[1])
    loop = GLib.MainLoop()
    name = dbus.service.BusName(IFACE, bus)
    Test(bus, loop)
    print("ready", flush=True)
    loop.run()
    del name
    print("quit", flush=True)


main()
