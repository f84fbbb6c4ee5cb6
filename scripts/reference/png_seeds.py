"""Writes the PNG seeds of the parser fuzzer (crates/ctrcl-data/tests/data/png/) with zlib and
struct only: an 8-bit grey label map, a 16-bit grey image, a palette image, an RGB image and a
0/255 mask.  Run from that folder: python3 scripts/reference/png_seeds.py"""
import struct
import zlib


def png(path, w, h, rows, color_type, bit_depth, plte=None):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rows)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    if plte:
        data += chunk(b"PLTE", plte)
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(path, "wb").write(data)


png("labels_grey8.png", 6, 4, [bytes((x + y) % 4 for x in range(6)) for y in range(4)], 0, 8)
png("grey16.png", 5, 3, [b"".join(struct.pack(">H", (x * 700 + y * 13) % 65536) for x in range(5)) for y in range(3)], 0, 16)
png("palette.png", 4, 4, [bytes((x + y) % 3 for x in range(4)) for y in range(4)], 3, 8, plte=bytes([0, 0, 0, 255, 0, 0, 0, 255, 0]))
png("rgb.png", 3, 3, [bytes(v for x in range(3) for v in (x * 40, y * 40, 9)) for y in range(3)], 2, 8)
png("mask255.png", 4, 2, [bytes(255 if x > 1 else 0 for x in range(4)) for y in range(2)], 0, 8)
