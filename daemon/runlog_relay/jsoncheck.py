"""Is this text one complete JSON document? Checked in pieces, without recursion.

The sidecar must know that a file is complete JSON before it uploads it (a torn write is
not), but it never needs the document itself. ``json.loads`` answers the question by
building every object: memory several times the file size, and ``RecursionError`` on a
valid document nested a thousand levels deep. :class:`JsonChecker` answers it in
constant memory (plus one byte per open container), fed piece by piece as a file is
read, and accepts exactly what ``json.loads`` accepts (strict: no control characters in
strings; ``NaN``, ``Infinity`` and ``-Infinity`` allowed, as Python writes them), with
two deliberate differences:

* any nesting depth is accepted: a valid document is mirrored, however deep, and runnable
  reading it back is runnable's concern, not a reason to leave the bucket behind;
* integers longer than Python's ``int_max_str_digits`` are accepted (Python cannot write
  such a file with ``json.dump`` either, so none appears in practice).

Speed comes from regular expressions that consume whole runs at once (a complete string,
a flat object of scalars, a run of ``, "key": value`` members); the Python loop only runs
at container boundaries and chunk ends, so a typical run log is checked at tens of MB/s.
Possessive quantifiers (Python 3.11) keep every pattern linear: no backtracking.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

__all__ = ["JsonChecker", "NotJson", "is_json"]

_WS = r"[ \t\n\r]*+"
_STRING_BODY = r'(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+'
_STRING = rf'"{_STRING_BODY}"'
_NUMBER = r"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?[0-9]++)?+"
_LITERAL = r"true|false|null|NaN|Infinity|-Infinity"
# A number or literal is only known to be complete when a delimiter follows it (the
# next piece of the file could continue "12" as "123"); strings end with their quote.
_SCALAR = rf"(?:{_STRING}|(?:{_NUMBER}|{_LITERAL})(?=[ \t\n\r,\]}}]))"


def _nested(levels: int) -> str:
    """A value whose containers nest at most ``levels`` deep, as one pattern.

    Each element (member) appears once per level: it is followed by a comma that a
    lookahead keeps from being the last one, or by the lookahead of the closing bracket.
    The textbook ``(?:v(?:,v)*)?`` names it twice, which made the pattern four times,
    not twice, as long per level, and compiling it a quarter of the start-up CPU."""
    value = _SCALAR
    for _ in range(levels):
        array = rf"\[{_WS}(?:{value}{_WS}(?:,{_WS}(?!\])|(?=\])))*+\]"
        member = rf"{_STRING}{_WS}:{_WS}{value}{_WS}"
        obj = rf"\{{{_WS}(?:{member}(?:,{_WS}(?!\}})|(?=\}})))*+\}}"
        value = rf"(?:{_SCALAR}|{obj}|{array})"
    return value


#: Values nested up to this deep are matched whole by one pattern; deeper ones go through
#: the loop one container at a time (the pattern grows fourfold per level). Two, not three:
#: compiling the depth-3 patterns cost every sidecar 0.13 CPU-s at start-up (a quarter of
#: it), and depth 2 checks runnable's run logs as fast or faster (bench: podcost).
_PATTERN_DEPTH = 2
_VALUE = _nested(_PATTERN_DEPTH)


class _Patterns(NamedTuple):
    ws: re.Pattern[str]
    value: re.Pattern[str]
    key: re.Pattern[str]
    members: re.Pattern[str]
    elements: re.Pattern[str]
    string_body: re.Pattern[str]
    number_or_literal: re.Pattern[str]
    #: What may still continue a number that reached the end of a piece ("1." -> "1.5").
    number_tail: re.Pattern[str]
    #: An escape cut by the end of a piece: a backslash, maybe "u" and up to three digits.
    partial_escape: re.Pattern[str]


@functools.cache
def _patterns() -> _Patterns:
    """Compiled on first use, not at import: about 9 ms of every sidecar's start-up, and
    only files over 1 MiB and the documents ``json.loads`` refuses (torn files) need them."""
    return _Patterns(
        ws=re.compile(_WS),
        value=re.compile(_VALUE),
        key=re.compile(rf"{_STRING}{_WS}:"),
        members=re.compile(rf"(?:{_WS},{_WS}{_STRING}{_WS}:{_WS}{_VALUE})*+"),
        elements=re.compile(rf"(?:{_WS},{_WS}{_VALUE})*+"),
        string_body=re.compile(_STRING_BODY),
        number_or_literal=re.compile(rf"{_NUMBER}|{_LITERAL}"),
        number_tail=re.compile(r"[0-9.eE+-]*+\Z"),
        partial_escape=re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z"),
    )


_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")

# Parser states.
_VALUE_NEXT = 0  # a value must come (top level, after ':' or after ',' in an array)
_VALUE_OR_CLOSE = 1  # just after '['
_KEY_OR_CLOSE = 2  # just after '{'
_KEY_NEXT = 3  # after ',' in an object
_AFTER_VALUE = 4  # ',' or the container's close (or the end, at top level)
_IN_KEY = 5  # inside a key string cut by the end of a piece
_IN_STRING = 6  # inside a value string cut by the end of a piece
_DONE = 7  # the top-level value is complete: only white space may follow
_COLON_NEXT = 8  # a key was read (across pieces): its colon comes next

_CLOSERS = {"}": "{", "]": "["}


class NotJson(ValueError):
    """The text is not one complete JSON document (``position``: where it went wrong)."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(f"{reason} at character {position}")
        self.reason = reason
        self.position = position


class JsonChecker:
    """Feed the text of a document in pieces; :meth:`finish` says whether it was JSON.

    Raises :class:`NotJson` as soon as the text cannot be the start of a JSON document.
    """

    __slots__ = ("_offset", "_stack", "_state", "_tail")

    def __init__(self) -> None:
        self._stack = bytearray()  # b"{" or b"[" per open container
        self._state = _VALUE_NEXT
        self._tail = ""  # an unfinished token carried over to the next piece
        self._offset = 0  # characters consumed before the tail

    @property
    def empty(self) -> bool:
        """Nothing but white space so far."""
        return self._state == _VALUE_NEXT and not self._stack and not self._tail

    def feed(self, text: str) -> None:
        """Check the next piece of the document."""
        self._run(self._tail + text if self._tail else text, final=False)

    def finish(self) -> None:
        """The document ended: raise NotJson unless it was exactly one JSON value."""
        self._run(self._tail, final=True)
        if self._state != _DONE:
            raise NotJson("unexpected end of the document", self._offset + len(self._tail))

    def _fail(self, reason: str, index: int) -> NotJson:
        return NotJson(reason, self._offset + index)

    def _run(self, buf: str, *, final: bool) -> None:
        (
            ws,
            value,
            key,
            members,
            elements,
            string_body,
            number_or_literal,
            number_tail,
            partial_escape,
        ) = _patterns()
        stack = self._stack
        state = self._state
        end = len(buf)
        i = 0
        while True:
            if state in (_IN_KEY, _IN_STRING):
                i = string_body.match(buf, i).end()  # type: ignore[union-attr]
                if i == end:
                    break
                char = buf[i]
                if char == '"':
                    i += 1
                    if state == _IN_KEY:
                        state = _COLON_NEXT
                        continue
                    state = _AFTER_VALUE if stack else _DONE
                    continue
                if not final and partial_escape.match(buf, i):
                    break
                raise self._fail("invalid character or escape in a string", i)
            i = ws.match(buf, i).end()  # type: ignore[union-attr]
            if i == end:
                break
            char = buf[i]
            if state == _COLON_NEXT:
                if char != ":":
                    raise self._fail("expected ':' after a key", i)
                i += 1
                state = _VALUE_NEXT
                continue
            if state == _AFTER_VALUE:
                opener = stack[-1]
                more = members if opener == 0x7B else elements  # "{": members
                i = more.match(buf, i).end()  # type: ignore[union-attr]
                i = ws.match(buf, i).end()  # type: ignore[union-attr]
                if i == end:
                    break
                char = buf[i]
                if char == ",":
                    i += 1
                    state = _KEY_NEXT if opener == 0x7B else _VALUE_NEXT
                    continue
                if char in _CLOSERS and ord(_CLOSERS[char]) == opener:
                    stack.pop()
                    i += 1
                    state = _AFTER_VALUE if stack else _DONE
                    continue
                raise self._fail("expected ',' or the end of the container", i)
            if state == _DONE:
                raise self._fail("extra data after the document", i)
            if state in (_KEY_OR_CLOSE, _KEY_NEXT):
                if state == _KEY_OR_CLOSE and char == "}":
                    stack.pop()
                    i += 1
                    state = _AFTER_VALUE if stack else _DONE
                    continue
                match = key.match(buf, i)
                if match is not None:
                    i = match.end()
                    state = _VALUE_NEXT
                    continue
                if char == '"':
                    i += 1
                    state = _IN_KEY
                    continue
                raise self._fail("expected a key", i)
            # _VALUE_NEXT or _VALUE_OR_CLOSE
            if state == _VALUE_OR_CLOSE and char == "]":
                stack.pop()
                i += 1
                state = _AFTER_VALUE if stack else _DONE
                continue
            match = value.match(buf, i)
            if match is not None:
                i = match.end()
                state = _AFTER_VALUE if stack else _DONE
                continue
            if char == "{":
                stack.append(0x7B)
                i += 1
                state = _KEY_OR_CLOSE
                continue
            if char == "[":
                stack.append(0x5B)
                i += 1
                state = _VALUE_OR_CLOSE
                continue
            if char == '"':
                i += 1
                state = _IN_STRING
                continue
            match = number_or_literal.match(buf, i)
            if match is not None:
                after = match.end()
                if not final and number_tail.match(buf, after):
                    break  # "12" or "1." at the end of a piece: wait for the rest
                i = after
                state = _AFTER_VALUE if stack else _DONE
                continue
            if not final and any(literal.startswith(buf[i:]) for literal in _LITERALS):
                break  # "tr", "-In": wait for the rest
            raise self._fail("expected a value", i)
        self._state = state
        self._offset += i
        self._tail = buf[i:]


def is_json(text: str) -> bool:
    """True when ``text`` is exactly one JSON document (see :class:`JsonChecker`)."""
    checker = JsonChecker()
    try:
        checker.feed(text)
        checker.finish()
    except NotJson:
        return False
    return True
