#!/usr/bin/env python3
"""The two desktop-session services the app's tray and notifications talk
to, on the test's own session bus (tests/src/desktop.rs starts this):

- org.kde.StatusNotifierWatcher (with a host registered), which
  libayatana-appindicator registers the tray item with, as a panel's tray
  host would provide it. Registered items are appended to
  OUT/items.jsonl as {"service": bus name, "path": object path}; the test
  then reads the item and its menu (com.canonical.dbusmenu) over the bus
  and clicks menu entries as a panel does.
- org.freedesktop.Notifications, as a notification daemon: every Notify
  call is appended to OUT/notifications.jsonl as
  {"app_name", "summary", "body"}.

Usage: desktop_services.py OUT_DIR. Prints READY once both names are
owned; exits when its standard input closes (the test is gone).
Needs python3-dbus and python3-gi (scripts/install-deps.sh).
"""

import json
import os
import sys

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

WATCHER = "org.kde.StatusNotifierWatcher"
NOTIFICATIONS = "org.freedesktop.Notifications"

out_dir = sys.argv[1]
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SessionBus()


def record(name, obj):
    with open(os.path.join(out_dir, name), "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


class Watcher(dbus.service.Object):
    def __init__(self):
        super().__init__(bus, "/StatusNotifierWatcher")
        self.items = []

    @dbus.service.method(WATCHER, in_signature="s", out_signature="", sender_keyword="sender")
    def RegisterStatusNotifierItem(self, service, sender=None):
        # libappindicator sends its object path (the bus name is the
        # sender); other implementations send a bus name.
        if service.startswith("/"):
            name, path = sender, service
        else:
            name, path = service, "/StatusNotifierItem"
        self.items.append(name + path)
        record("items.jsonl", {"service": str(name), "path": str(path)})
        self.StatusNotifierItemRegistered(name + path)

    @dbus.service.method(WATCHER, in_signature="s", out_signature="")
    def RegisterStatusNotifierHost(self, service):
        pass

    @dbus.service.signal(WATCHER, signature="s")
    def StatusNotifierItemRegistered(self, service):
        pass

    @dbus.service.signal(WATCHER, signature="s")
    def StatusNotifierItemUnregistered(self, service):
        pass

    @dbus.service.signal(WATCHER, signature="")
    def StatusNotifierHostRegistered(self):
        pass

    def props(self):
        return {
            "RegisteredStatusNotifierItems": dbus.Array(self.items, signature="s"),
            "IsStatusNotifierHostRegistered": dbus.Boolean(True),
            "ProtocolVersion": dbus.Int32(0),
        }

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="ss", out_signature="v")
    def Get(self, interface, prop):
        return self.props()[prop]

    @dbus.service.method(dbus.PROPERTIES_IFACE, in_signature="s", out_signature="a{sv}")
    def GetAll(self, interface):
        return self.props()


class Notifications(dbus.service.Object):
    def __init__(self):
        super().__init__(bus, "/org/freedesktop/Notifications")
        self.next_id = 1

    @dbus.service.method(NOTIFICATIONS, in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app_name, replaces_id, app_icon, summary, body, actions, hints, timeout):
        record(
            "notifications.jsonl",
            {"app_name": str(app_name), "summary": str(summary), "body": str(body)},
        )
        nid = self.next_id
        self.next_id += 1
        return dbus.UInt32(nid)

    @dbus.service.method(NOTIFICATIONS, in_signature="", out_signature="as")
    def GetCapabilities(self):
        return ["body"]

    @dbus.service.method(NOTIFICATIONS, in_signature="u", out_signature="")
    def CloseNotification(self, nid):
        pass

    @dbus.service.method(NOTIFICATIONS, in_signature="", out_signature="ssss")
    def GetServerInformation(self):
        return ("latchkey-test-notifications", "latchkey", "1", "1.2")

    @dbus.service.signal(NOTIFICATIONS, signature="uu")
    def NotificationClosed(self, nid, reason):
        pass


watcher = Watcher()
notifications = Notifications()
names = [dbus.service.BusName(WATCHER, bus), dbus.service.BusName(NOTIFICATIONS, bus)]
loop = GLib.MainLoop()


def stdin_closed(*_):
    loop.quit()
    return False


GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, stdin_closed)
print("READY", flush=True)
loop.run()
