"""Go's fmt package, for the verbs and the types that templates can print.

Everything a template outputs goes through here: {{ $value }} is fmt.Fprint, printf is
fmt.Sprintf, and humanize* are built on Go's %.4g.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _strconv
from ._gotime import GoMonth, GoTime, GoWeekday
from ._strconv import format_float
from ._values import AlertData, GoMap, QueryResult, Sample, type_name


def format_go_float(f: float) -> str:
    """A float64 as Go's fmt prints it with %v: 0.85, 100, 1e+06, 1.5e-07, NaN, +Inf, -0."""
    return format_float(f, "g", -1)


@dataclass
class _Flags:
    plus: bool = False
    minus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    plus_v: bool = False
    sharp_v: bool = False
    wid: int | None = None
    prec: int | None = None


_STRINGERS = (GoTime, GoMonth, GoWeekday)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Printer:
    """One fmt.Sprint/Sprintf/Sprintln call, mirroring Go's pp and fmt types."""

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.f = _Flags()
        self.arg: object = None

    # Padding (fmt.pad / writePadding).
    def _pad(self, s: str) -> None:
        f = self.f
        if f.wid is None or f.wid == 0:
            self.buf.append(s)
            return
        width = f.wid - len(s)
        if width <= 0:
            self.buf.append(s)
        elif f.minus:
            self.buf.append(s + " " * width)
        else:
            self.buf.append(("0" if f.zero else " ") * width + s)

    # Per-kind formatting.
    def _fmt_bool(self, v: bool, verb: str) -> None:
        if verb in "tv":
            self._pad("true" if v else "false")
        else:
            self._bad_verb(verb)

    def _fmt_integer(self, v: int, verb: str) -> None:
        f = self.f
        if verb in "vd":
            base, digits = 10, "0123456789"
        elif verb == "b":
            base, digits = 2, "01"
        elif verb in "oO":
            base, digits = 8, "01234567"
        elif verb == "x":
            base, digits = 16, "0123456789abcdef"
        elif verb == "X":
            base, digits = 16, "0123456789ABCDEF"
        elif verb == "c":
            self._pad(chr(v) if 0 <= v <= 0x10FFFF and not 0xD800 <= v < 0xE000 else "\ufffd")
            return
        elif verb == "q":
            self._pad(_strconv.quote_rune(v, ascii_only=f.plus))
            return
        elif verb == "U":
            s = f"U+{v:04X}" if v >= 0 else f"U+{v & 0xFFFFFFFFFFFFFFFF:04X}"
            if f.sharp and 0 <= v <= 0x10FFFF and _strconv.is_print(chr(v)):
                s += f" '{chr(v)}'"
            self._pad(s)
            return
        else:
            self._bad_verb(verb)
            return
        negative = v < 0
        u = -v if negative else v
        prec = 0
        if f.prec is not None:
            prec = f.prec
            if prec == 0 and u == 0:
                saved, f.zero = f.zero, False
                self._pad("")
                f.zero = saved
                return
        elif f.zero and f.wid is not None:
            prec = f.wid
            if negative or f.plus or f.space:
                prec -= 1
        body = ""
        while u:
            u, r = divmod(u, base)
            body = digits[r] + body
        body = body or "0"
        body = "0" * (prec - len(body)) + body
        if f.sharp:
            if base == 2:
                body = "0b" + body
            elif base == 8 and body[0] != "0":
                body = "0" + body
            elif base == 16:
                body = "0" + verb + body
        if verb == "O":
            body = "0o" + body
        if negative:
            body = "-" + body
        elif f.plus:
            body = "+" + body
        elif f.space:
            body = " " + body
        saved, f.zero = f.zero, False
        self._pad(body)
        f.zero = saved

    def _fmt_float(self, v: float, verb: str) -> None:
        f = self.f
        if verb == "v":
            conv, prec = "g", -1
        elif verb in "gGxX":
            conv, prec = verb, -1
        elif verb in "eEf":
            conv, prec = verb, 6
        elif verb == "F":
            conv, prec = "f", 6
        else:
            self._bad_verb(verb)
            return
        if f.prec is not None:
            prec = f.prec
        num = format_float(v, conv, prec)
        if num[0] not in "+-":
            num = "+" + num
        if f.space and num[0] == "+" and not f.plus:
            num = " " + num[1:]
        if num[1] in "IN":
            saved, f.zero = f.zero, False
            if num[1] == "N" and not f.space and not f.plus:
                num = num[1:]
            self._pad(num)
            f.zero = saved
            return
        if f.plus or num[0] != "+":
            if f.zero and f.wid is not None and f.wid > len(num):
                self.buf.append(num[0] + "0" * (f.wid - len(num)) + num[1:])
                return
            self._pad(num)
            return
        self._pad(num[1:])

    def _fmt_string(self, s: str, verb: str) -> None:
        f = self.f
        if verb in "vs":
            if f.sharp_v:
                self._pad(_strconv.quote(s))
                return
            self._pad(s[: f.prec] if f.prec is not None else s)
        elif verb in "xX":
            self._fmt_sx(s, verb)
        elif verb == "q":
            if f.prec is not None:
                s = s[: f.prec]
            if f.sharp and _strconv.can_backquote(s):
                self._pad("`" + s + "`")
            else:
                self._pad(_strconv.quote(s, ascii_only=f.plus))
        else:
            self._bad_verb(verb)

    def _fmt_sx(self, s: str, verb: str) -> None:
        f = self.f
        data = s.encode("utf-8", "surrogateescape")
        if f.prec is not None:
            data = data[: f.prec]
        digits = "0123456789abcdef" if verb == "x" else "0123456789ABCDEF"
        out: list[str] = []
        for i, c in enumerate(data):
            if f.space and i > 0:
                out.append(" ")
                if f.sharp:
                    out.append("0" + verb)
            elif f.sharp and (f.space or i == 0):
                out.append("0" + verb)
            out.append(digits[c >> 4] + digits[c & 0xF])
        self._pad("".join(out))

    def _bad_verb(self, verb: str) -> None:
        self.buf.append("%!" + verb + "(")
        if self.arg is not None:
            self.buf.append(type_name(self.arg) + "=")
            self._print_arg(self.arg, "v")
        else:
            self.buf.append("<nil>")
        self.buf.append(")")

    # Dispatch (pp.printArg / pp.printValue).
    def print_arg(self, arg: object, verb: str) -> None:
        self.arg = arg
        self._print_arg(arg, verb)

    def _print_arg(self, arg: object, verb: str) -> None:
        if arg is None:
            if verb in "Tv":
                self._pad("<nil>")
            else:
                self._bad_verb(verb)
            return
        if verb == "T":
            self._fmt_string(type_name(arg), "s")
            return
        self._print_value(arg, verb, 0)

    def _print_value(self, v: object, verb: str, depth: int) -> None:
        if depth > 0:
            self.arg = v
        if isinstance(v, _STRINGERS) and verb in "vsxXq":
            self._fmt_string(str(v), verb)
        elif v is None:
            self._pad("<nil>")
        elif isinstance(v, bool):
            self._fmt_bool(v, verb)
        elif isinstance(v, int):
            self._fmt_integer(int(v), verb)
        elif isinstance(v, float):
            self._fmt_float(v, verb)
        elif isinstance(v, str):
            self._fmt_string(str(v), verb)
        elif isinstance(v, GoMap):
            self.buf.append("map[")
            for i, key in enumerate(sorted(v)):
                if i:
                    self.buf.append(" ")
                self._print_value(key, verb, depth + 1)
                self.buf.append(":")
                self._print_value(v[key], verb, depth + 1)
            self.buf.append("]")
        elif isinstance(v, QueryResult | list):
            self.buf.append("[")
            for i, elem in enumerate(v):
                if i:
                    self.buf.append(" ")
                self._print_value(elem, verb, depth + 1)
            self.buf.append("]")
        elif isinstance(v, Sample | AlertData):
            if isinstance(v, Sample) and v.pointer:
                if depth > 0:
                    # Go prints nested pointers as addresses; any stable stand-in will do.
                    self._pad(f"0xc{id(v) & 0xFFFFFFFFF:09x}")
                    return
                self.buf.append("&")
            self.buf.append("{")
            for i, (name, value) in enumerate(v.fields()):
                if i:
                    self.buf.append(" ")
                if self.f.plus_v:
                    self.buf.append(name + ":")
                self._print_value(value, verb, depth + 1)
            self.buf.append("}")
        else:
            self._bad_verb(verb)

    # Entry points.
    def do_print(self, args: list[object]) -> str:
        prev_string = False
        for i, arg in enumerate(args):
            is_string = isinstance(arg, str)
            if i > 0 and not is_string and not prev_string:
                self.buf.append(" ")
            self.f = _Flags()
            self.print_arg(arg, "v")
            prev_string = is_string
        return "".join(self.buf)

    def do_println(self, args: list[object]) -> str:
        for i, arg in enumerate(args):
            if i > 0:
                self.buf.append(" ")
            self.f = _Flags()
            self.print_arg(arg, "v")
        self.buf.append("\n")
        return "".join(self.buf)

    def do_printf(self, fmt: str, args: list[object]) -> str:
        end = len(fmt)
        arg_num = 0
        after_index = False
        reordered = False
        i = 0
        while i < end:
            good_arg_num = True
            last = i
            while i < end and fmt[i] != "%":
                i += 1
            if i > last:
                self.buf.append(fmt[last:i])
            if i >= end:
                break
            i += 1
            f = self.f = _Flags()
            while i < end and fmt[i] in "#0+- ":
                c = fmt[i]
                if c == "#":
                    f.sharp = True
                elif c == "0":
                    f.zero = not f.minus
                elif c == "+":
                    f.plus = True
                elif c == "-":
                    f.minus, f.zero = True, False
                else:
                    f.space = True
                i += 1
            arg_num, i, after_index, ok, seen = _arg_number(arg_num, fmt, i, len(args))
            reordered |= seen
            good_arg_num &= ok
            if i < end and fmt[i] == "*":
                i += 1
                f.wid, arg_num = _int_from_arg(args, arg_num)
                if f.wid is None:
                    self.buf.append("%!(BADWIDTH)")
                elif f.wid < 0:
                    f.wid, f.minus, f.zero = -f.wid, True, False
                after_index = False
            else:
                f.wid, i = _parse_num(fmt, i, end)
                if after_index and f.wid is not None:
                    good_arg_num = False
            if i + 1 < end and fmt[i] == ".":
                i += 1
                if after_index:
                    good_arg_num = False
                arg_num, i, after_index, ok, seen = _arg_number(arg_num, fmt, i, len(args))
                reordered |= seen
                good_arg_num &= ok
                if i < end and fmt[i] == "*":
                    i += 1
                    f.prec, arg_num = _int_from_arg(args, arg_num)
                    if f.prec is not None and f.prec < 0:
                        f.prec = None
                    if f.prec is None:
                        self.buf.append("%!(BADPREC)")
                    after_index = False
                else:
                    f.prec, i = _parse_num(fmt, i, end)
                    if f.prec is None:
                        f.prec = 0
            if not after_index:
                arg_num, i, after_index, ok, seen = _arg_number(arg_num, fmt, i, len(args))
                reordered |= seen
                good_arg_num &= ok
            if i >= end:
                self.buf.append("%!(NOVERB)")
                break
            verb = fmt[i]
            i += 1
            if verb == "%":
                self.buf.append("%")
            elif not good_arg_num:
                self.buf.append(f"%!{verb}(BADINDEX)")
            elif arg_num >= len(args):
                self.buf.append(f"%!{verb}(MISSING)")
            else:
                if verb == "v":
                    f.sharp_v, f.sharp = f.sharp, False
                    f.plus_v, f.plus = f.plus, False
                self.print_arg(args[arg_num], verb)
                arg_num += 1
        if not reordered and arg_num < len(args):
            self.f = _Flags()
            self.buf.append("%!(EXTRA ")
            for j, arg in enumerate(args[arg_num:]):
                if j:
                    self.buf.append(", ")
                if arg is None:
                    self.buf.append("<nil>")
                else:
                    self.buf.append(type_name(arg) + "=")
                    self.print_arg(arg, "v")
            self.buf.append(")")
        return "".join(self.buf)


def _parse_num(s: str, start: int, end: int) -> tuple[int | None, int]:
    i = start
    while i < end and s[i].isdigit() and s[i].isascii():
        i += 1
    if i == start:
        return None, start
    n = int(s[start:i])
    return (n if n <= 1_000_000 else None), i


def _arg_number(
    arg_num: int, fmt: str, i: int, num_args: int
) -> tuple[int, int, bool, bool, bool]:
    """Parse an explicit [n] index: (arg_num, i, found, good, reordered)."""
    if i >= len(fmt) or fmt[i] != "[":
        return arg_num, i, False, True, False
    close = fmt.find("]", i + 1)
    if close < 0 or len(fmt) - i < 3:
        return arg_num, i + 1, False, False, True
    n, j = _parse_num(fmt, i + 1, close)
    if n is None or j != close:
        return arg_num, close + 1, False, False, True
    index = n - 1
    if 0 <= index < num_args:
        return index, close + 1, True, True, True
    return arg_num, close + 1, True, False, True


def _int_from_arg(args: list[object], arg_num: int) -> tuple[int | None, int]:
    if arg_num < len(args):
        a = args[arg_num]
        if _is_int(a) and -1_000_000 <= int(a) <= 1_000_000:  # type: ignore[call-overload]
            return int(a), arg_num + 1  # type: ignore[call-overload]
        return None, arg_num + 1
    return None, arg_num


def sprint(args: list[object]) -> str:
    """fmt.Sprint."""
    return _Printer().do_print(args)


def sprintln(args: list[object]) -> str:
    """fmt.Sprintln."""
    return _Printer().do_println(args)


def sprintf(fmt: str, args: list[object]) -> str:
    """fmt.Sprintf."""
    return _Printer().do_printf(fmt, args)
