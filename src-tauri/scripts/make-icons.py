#!/usr/bin/env python3
"""Draws the app's icons (ui/web/assets/icon.svg's shapes) as RGBA PNGs,
plus .ico and .icns wrapping PNGs, with the standard library only.
Run from src-tauri/: python3 scripts/make-icons.py"""
import struct, zlib, math, os

def png(size, rgba_at):
    raw = bytearray()
    for y in range(size):
        raw.append(0)
        for x in range(size):
            raw.extend(rgba_at(x, y, size))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))

def shape(bg):
    def at(px, py, size):
        ss, cov_bg, cov_fg = 4, 0, 0
        for sy in range(ss):
            for sx in range(ss):
                x = (px + (sx + .5) / ss) * 32 / size
                y = (py + (sy + .5) / ss) * 32 / size
                # rounded rect 32x32 rx 7
                cx, cy = min(max(x, 7), 25), min(max(y, 7), 25)
                if (x - cx) ** 2 + (y - cy) ** 2 > 49:
                    continue
                cov_bg += 1
                d = math.hypot(x - 12, y - 16)
                ring = abs(d - 5.5) <= 1.5
                bar = 16 <= x <= 27 and abs(y - 16) <= 1.5 or (abs(x - 27) <= 1.5 and 16 <= y <= 20) \
                    or (abs(x - 23) <= 1.5 and 16 <= y <= 19)
                if ring or bar:
                    cov_fg += 1
        n = ss * ss
        if cov_bg == 0:
            return bytes([0, 0, 0, 0])
        f = cov_fg / cov_bg
        col = [round(bg[i] * (1 - f) + 255 * f) for i in range(3)]
        return bytes(col + [round(255 * cov_bg / n)])
    return at

blue, grey = (0x1f, 0x4f, 0xd1), (0x8a, 0x8f, 0x98)
os.makedirs("icons", exist_ok=True)
pngs = {}
for s in (32, 64, 128, 256, 512):
    pngs[s] = png(s, shape(blue))
for name, s in (("32x32.png", 32), ("128x128.png", 128), ("128x128@2x.png", 256), ("icon.png", 512), ("tray.png", 64)):
    open(f"icons/{name}", "wb").write(pngs[s])
open("icons/tray-sealed.png", "wb").write(png(64, shape(grey)))
# .ico: PNG-compressed entries (Vista and later).
entries = [(s, pngs[s]) for s in (32, 64, 128, 256)]
ico = struct.pack("<HHH", 0, 1, len(entries))
off = 6 + 16 * len(entries)
for s, data in entries:
    ico += struct.pack("<BBBBHHII", s % 256, s % 256, 0, 0, 1, 32, len(data), off)
    off += len(data)
open("icons/icon.ico", "wb").write(ico + b"".join(d for _, d in entries))
# .icns: ic07 (128), ic08 (256), ic09 (512) as PNG.
body = b"".join(t + struct.pack(">I", 8 + len(pngs[s])) + pngs[s] for t, s in ((b"ic07", 128), (b"ic08", 256), (b"ic09", 512)))
open("icons/icon.icns", "wb").write(b"icns" + struct.pack(">I", 8 + len(body)) + body)
