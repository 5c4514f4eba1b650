#!/usr/bin/env python3
"""Closes a top-level X11 window the way a window manager does when its close
button is clicked: a WM_DELETE_WINDOW client message (ICCCM). Used by
tests/it/desktop.rs to close the desktop app's window as a person would (a
WebDriver "close window" also ends the automation session, which stops the
app). Standard library only (ctypes on libX11).

Usage: DISPLAY=:N close_window.py TITLE   -> exit 0 when a window was told
"""
import ctypes
import ctypes.util
import sys

X = ctypes.cdll.LoadLibrary(ctypes.util.find_library("X11") or "libX11.so.6")
Window = ctypes.c_ulong
Atom = ctypes.c_ulong


class ClientMessage(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("serial", ctypes.c_ulong),
        ("send_event", ctypes.c_int),
        ("display", ctypes.c_void_p),
        ("window", Window),
        ("message_type", Atom),
        ("format", ctypes.c_int),
        ("data", ctypes.c_long * 5),
    ]


class XEvent(ctypes.Union):
    _fields_ = [("xclient", ClientMessage), ("pad", ctypes.c_long * 24)]


X.XOpenDisplay.restype = ctypes.c_void_p
X.XOpenDisplay.argtypes = [ctypes.c_char_p]
X.XDefaultRootWindow.restype = Window
X.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
X.XInternAtom.restype = Atom
X.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
X.XQueryTree.argtypes = [ctypes.c_void_p, Window, ctypes.POINTER(Window), ctypes.POINTER(Window),
                         ctypes.POINTER(ctypes.POINTER(Window)), ctypes.POINTER(ctypes.c_uint)]
X.XFetchName.argtypes = [ctypes.c_void_p, Window, ctypes.POINTER(ctypes.c_char_p)]
X.XSendEvent.argtypes = [ctypes.c_void_p, Window, ctypes.c_int, ctypes.c_long, ctypes.POINTER(XEvent)]
X.XFlush.argtypes = [ctypes.c_void_p]
X.XFree.argtypes = [ctypes.c_void_p]


def windows(dpy, w):
    root, parent = Window(), Window()
    kids = ctypes.POINTER(Window)()
    n = ctypes.c_uint()
    if not X.XQueryTree(dpy, w, ctypes.byref(root), ctypes.byref(parent), ctypes.byref(kids), ctypes.byref(n)):
        return
    children = [kids[i] for i in range(n.value)]
    if kids:
        X.XFree(kids)
    for c in children:
        yield c
        yield from windows(dpy, c)


# Windows come and go while we walk the tree (WebKit's helpers): a request
# about one already gone is not an error here. Xlib's default handler
# would exit the process.
ERROR_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(lambda d, e: 0)


def main():
    title = sys.argv[1].encode()
    X.XSetErrorHandler(ERROR_HANDLER)
    dpy = X.XOpenDisplay(None)
    if not dpy:
        sys.exit("cannot open the display")
    protocols = X.XInternAtom(dpy, b"WM_PROTOCOLS", 0)
    delete = X.XInternAtom(dpy, b"WM_DELETE_WINDOW", 0)
    told = 0
    for w in windows(dpy, X.XDefaultRootWindow(dpy)):
        name = ctypes.c_char_p()
        if X.XFetchName(dpy, w, ctypes.byref(name)) and name.value == title:
            ev = XEvent()
            ev.xclient.type = 33  # ClientMessage
            ev.xclient.window = w
            ev.xclient.message_type = protocols
            ev.xclient.format = 32
            ev.xclient.data[0] = delete
            ev.xclient.data[1] = 0  # CurrentTime
            X.XSendEvent(dpy, w, 0, 0, ctypes.byref(ev))
            told += 1
    X.XFlush(dpy)
    if not told:
        sys.exit(f"no window titled {sys.argv[1]!r}")
    print(f"closed {told} window(s)")


if __name__ == "__main__":
    main()
