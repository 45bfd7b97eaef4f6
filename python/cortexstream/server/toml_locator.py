"""Line numbers of the keys and values of a TOML file, which `tomllib` does not give.

`key_lines(text)` maps every key path to the line it is defined on: `("server", "port")`,
`("models", 1, "defaults", "temperature")` (an array of tables, or an array, counts from 0).
It reads a file `tomllib` has already accepted, so it only has to follow TOML's structure, not
report its errors: table headers (`[a.b]`, `[[models]]`, quoted and dotted keys), dotted keys
(`a.b = 1` defines `a` and `a.b`), inline tables, arrays spanning lines (each element at the
line it starts on), comments, and strings, multi-line ones included, whose text must never be
mistaken for a key or a header.
"""

from __future__ import annotations

from collections.abc import Sequence

#: One step of a key path: a table key, or an index into an array (of tables).
PathPart = str | int
KeyPath = tuple[PathPart, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b"}


def key_lines(text: str) -> dict[KeyPath, int]:
    """Every key path of the document `text` (valid TOML) -> its 1-based line number."""
    return _Scanner(text).document()


def line_of(lines: dict[KeyPath, int], path: Sequence[PathPart]) -> int | None:
    """The line of `path`, or of its nearest ancestor defined in the file (a missing key is
    reported at the table that lacks it); None when nothing on the way is in the file."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        # How many tables each array of tables (by its full path, parents' indices included) has.
        self.table_counts: dict[KeyPath, int] = {}

    # -- the document --------------------------------------------------------------------

    def document(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.at_end():
                return self.lines
            if self.text.startswith("[[", self.pos):
                table = self.array_table_header()
            elif self.peek() == "[":
                table = self.table_header()
            else:
                self.key_value(table)

    def table_header(self) -> KeyPath:
        line = self.line
        self.pos += 1
        path = self.resolve(self.key())
        self.expect("]")
        for end in range(1, len(path) + 1):
            self.record(path[:end], line)
        return path

    def array_table_header(self) -> KeyPath:
        line = self.line
        self.pos += 2
        keys = self.key()
        self.expect("]]")
        array = (*self.resolve(keys[:-1]), keys[-1])
        index = self.table_counts.get(array, 0)
        self.table_counts[array] = index + 1
        path = (*array, index)
        self.record(array, line)
        self.record(path, line)
        return path

    def resolve(self, keys: Sequence[str]) -> KeyPath:
        """A header's keys as a path: a key naming an array of tables means its last table."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            if path in self.table_counts:
                path = (*path, self.table_counts[path] - 1)
        return path

    def key_value(self, table: KeyPath) -> None:
        line = self.line
        path = table
        for key in self.key():
            path = (*path, key)
            self.record(path, line)
        self.skip_blank()
        self.expect("=")
        self.skip_blank()
        self.value(path)

    # -- keys and values -----------------------------------------------------------------

    def key(self) -> list[str]:
        """A dotted key: bare or quoted parts separated by dots (spaces allowed around them)."""
        parts = []
        while True:
            self.skip_blank()
            char = self.peek()
            if char == '"':
                parts.append(self.basic_string())
            elif char == "'":
                parts.append(self.literal_string())
            else:
                start = self.pos
                while not self.at_end() and self.peek() in _BARE_KEY_CHARS:
                    self.pos += 1
                parts.append(self.text[start:self.pos])
            self.skip_blank()
            if self.peek() != ".":
                return parts
            self.pos += 1

    def value(self, path: KeyPath) -> None:
        char = self.peek()
        if char == '"':
            self.basic_string()
        elif char == "'":
            self.literal_string()
        elif char == "[":
            self.array(path)
        elif char == "{":
            self.inline_table(path)
        else:
            # A number, a boolean or a date: it ends where the next delimiter starts.
            while not self.at_end() and self.peek() not in ",]}#\n\r":
                self.pos += 1

    def array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_blank(newlines=True)
            self.not_at_end()
            if self.peek() == "]":
                self.pos += 1
                return
            self.record((*path, index), self.line)
            self.value((*path, index))
            index += 1
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.pos += 1

    def inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self.skip_blank(newlines=True)
            self.not_at_end()
            if self.peek() == "}":
                self.pos += 1
                return
            self.key_value(path)
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.pos += 1

    # -- strings (their text only matters for quoted keys) ----------------------------------

    def basic_string(self) -> str:
        if self.text.startswith('"""', self.pos):
            return self.multiline('"""', escapes=True)
        self.pos += 1
        out = []
        while self.peek() != '"':
            out.append(self.escaped_char() if self.peek() == "\\" else self.take())
        self.pos += 1
        return "".join(out)

    def literal_string(self) -> str:
        if self.text.startswith("'''", self.pos):
            return self.multiline("'''", escapes=False)
        self.pos += 1
        end = self.text.index("'", self.pos)
        text = self.text[self.pos:end]
        self.pos = end + 1
        return text

    def multiline(self, quotes: str, *, escapes: bool) -> str:
        self.pos += 3
        out = []
        while not self.text.startswith(quotes, self.pos) or self.text.startswith(quotes + quotes[0], self.pos):
            # Up to two quotes may end the text right before the closing three (`""""`).
            if escapes and self.peek() == "\\":
                self.pos += 1
                if self.peek() in " \t\r\n":  # a line-ending backslash trims the whitespace after it
                    while self.peek() in (" ", "\t", "\r", "\n"):
                        self.take()
                else:
                    self.pos -= 1
                    out.append(self.escaped_char())
            else:
                out.append(self.take())
        self.pos += 3
        return "".join(out)

    def escaped_char(self) -> str:
        self.pos += 1
        code = self.take()
        if code in "uU":
            width = 4 if code == "u" else 8
            digits = self.text[self.pos:self.pos + width]
            self.pos += width
            return chr(int(digits, 16))
        return _ESCAPES.get(code, code)

    # -- characters ---------------------------------------------------------------------

    def skip_blank(self, *, newlines: bool = False) -> None:
        """Skips spaces, tabs and a comment; with `newlines`, line ends (and more comments) too."""
        while not self.at_end():
            char = self.peek()
            if char in " \t":
                self.pos += 1
            elif char == "#":
                while not self.at_end() and self.peek() != "\n":
                    self.pos += 1
            elif newlines and char in "\r\n":
                self.take()
            else:
                return

    def take(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        if char == "\n":
            self.line += 1
        return char

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            # Only reachable with text tomllib refused; callers never pass such text.
            raise ValueError(f"line {self.line}: expected {token!r}")
        self.pos += len(token)

    def not_at_end(self) -> None:
        if self.at_end():
            raise ValueError(f"line {self.line}: unexpected end of the file")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def record(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)
