"""A tiny PNG line-chart writer (no matplotlib or Pillow in the virtualenv): panels of time series
with axes, tick labels and a legend in a built-in 3x5 pixel font."""

from __future__ import annotations

import struct
import zlib

FONT = {  # 3x5 glyphs, rows top to bottom, 3 bits each
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    ":": "000010000010000", "/": "001001010100100", "%": "101001010100101", " ": "000000000000000",
    "(": "010100100100010", ")": "010001001001010", "=": "000111000111000", "+": "000010111010000",
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011", "D": "110101101101110",
    "E": "111100110100111", "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010", "P": "110101110100100",
    "Q": "010101101110011", "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", "_": "000000000000111", ",": "000000000010100",
}  # fmt: skip

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


class Canvas:
    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x: int, y: int, c: tuple[int, int, int]) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i : i + 3] = bytes(c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c, width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            for k in range(width):
                self.dot(x0, y0 + k, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, c=(0, 0, 0), scale: int = 2) -> None:
        for ch in s.upper():
            g = FONT.get(ch, FONT[" "])
            for r in range(5):
                for col in range(3):
                    if g[r * 3 + col] == "1":
                        for a in range(scale):
                            for b in range(scale):
                                self.dot(x + col * scale + a, y + r * scale + b, c)
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        head = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", head)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == 0 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.2f}"


def chart(panels: list[dict], title: str, width: int = 900, panel_h: int = 200) -> bytes:
    """panels: [{"title", "series": [(label, [(x, y), ...])], "ylabel"?, "marks"?: [(x, label)]}]."""
    left, right, top, gap = 70, 20, 40, 50
    cv = Canvas(width, top + len(panels) * (panel_h + gap))
    cv.text(left, 10, title, scale=3)
    for p_i, panel in enumerate(panels):
        y0 = top + p_i * (panel_h + gap) + 20
        pts = [pt for _, s in panel["series"] for pt in s]
        if not pts:
            continue
        xmax = max(x for x, _ in pts) or 1.0
        ymax = max(y for _, y in pts) * 1.1 or 1.0
        x_of = lambda x, xm=xmax: left + int((width - left - right) * x / xm)  # noqa: E731
        y_of = lambda y, t=y0, ym=ymax: t + panel_h - int(panel_h * y / ym)  # noqa: E731
        cv.text(left, y0 - 16, panel["title"])
        cv.line(left, y0, left, y0 + panel_h, (0, 0, 0))
        cv.line(left, y0 + panel_h, width - right, y0 + panel_h, (0, 0, 0))
        for k in range(5):
            yv = ymax * k / 4
            cv.line(left - 4, y_of(yv), left, y_of(yv), (0, 0, 0))
            cv.line(left + 1, y_of(yv), width - right, y_of(yv), (225, 225, 225))
            cv.text(4, y_of(yv) - 5, _fmt(yv))
        for k in range(7):
            xv = xmax * k / 6
            cv.line(x_of(xv), y0 + panel_h, x_of(xv), y0 + panel_h + 4, (0, 0, 0))
            cv.text(x_of(xv) - 8, y0 + panel_h + 8, _fmt(xv) + "S")
        for x, label in panel.get("marks", []):
            for yy in range(y0, y0 + panel_h, 4):
                cv.dot(x_of(x), yy, (120, 120, 120))
            cv.text(x_of(x) + 4, y0 + 2, label, (90, 90, 90))
        for s_i, (label, series) in enumerate(panel["series"]):
            c = COLORS[s_i % len(COLORS)]
            pts = sorted(series)
            for (xa, ya), (xb, yb) in zip(pts, pts[1:], strict=False):
                cv.line(x_of(xa), y_of(ya), x_of(xb), y_of(yb), c, width=2)
            lx = width - right - 260
            cv.line(lx, y0 + 10 + 14 * s_i, lx + 20, y0 + 10 + 14 * s_i, c, width=3)
            cv.text(lx + 26, y0 + 5 + 14 * s_i, label, c)
    return cv.png()
