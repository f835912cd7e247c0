"""jsoncheck: the streaming JSON check accepts exactly what json.loads accepts.

Compared with ``json.loads`` itself on generated documents, on every truncation of
them and on random mutations, each fed whole and cut into random pieces (down to one
character), so a chunk boundary inside any token is exercised.
"""

from __future__ import annotations

import json
import random

import pytest

from runlog_relay.jsoncheck import JsonChecker, NotJson, is_json


def loads_ok(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def check_in_pieces(text: str, rng: random.Random) -> bool:
    checker = JsonChecker()
    try:
        index = 0
        while index < len(text):
            size = rng.choice([1, 1, 2, 3, 7, 64, 4096])
            checker.feed(text[index : index + size])
            index += size
        checker.finish()
    except NotJson:
        return False
    return True


SCALARS = [
    0,
    -0,
    1,
    -17,
    12345678901234567890,
    0.5,
    -1.25e-7,
    1e300,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    False,
    None,
    "",
    "plain",
    'quote " and \\ backslash',
    "tab\tnew\nline\x01control",
    "naïve ☃ 𝄞 \u2028",
    "\ud800",  # a lone surrogate: json writes it as an escape, json.loads reads it back
]


def document(rng: random.Random, depth: int = 0) -> object:
    kind = rng.random()
    if depth > 5 or kind < 0.4:
        return rng.choice(SCALARS)
    if kind < 0.7:
        return [document(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {
        rng.choice(["a", "b", "key", "ünï", 'q"', "", "\\"]) + str(i): document(rng, depth + 1)
        for i in range(rng.randint(0, 5))
    }


def serialize(value: object, rng: random.Random) -> str:
    return json.dumps(
        value,
        indent=rng.choice([None, 0, 2, "\t"]),
        ensure_ascii=rng.random() < 0.5,
        separators=rng.choice([None, (",", ":"), (" , ", " : ")]),
    )


def test_generated_documents_are_accepted() -> None:
    rng = random.Random(1)
    for _ in range(400):
        text = serialize(document(rng), rng)
        assert is_json(text), text
        assert check_in_pieces(text, rng), text


def test_every_truncation_agrees_with_json_loads() -> None:
    rng = random.Random(2)
    for _ in range(30):
        text = serialize(document(rng), rng)
        for cut in range(len(text) + 1):
            prefix = text[:cut]
            expected = loads_ok(prefix)
            assert is_json(prefix) is expected, repr(prefix)
            assert check_in_pieces(prefix, rng) is expected, repr(prefix)


def test_random_mutations_agree_with_json_loads() -> None:
    rng = random.Random(3)
    alphabet = '{}[]:,"\\ \t\n\r0123456789.eE+-truefalsnNIfiy\x00\x1fuabcdef☃'
    for _ in range(10_000):
        chars = list(serialize(document(rng), rng))
        for _ in range(rng.randint(1, 3)):
            where = rng.randint(0, len(chars))
            action = rng.random()
            if action < 0.4 and chars:
                chars[min(where, len(chars) - 1)] = rng.choice(alphabet)
            elif action < 0.7:
                chars.insert(where, rng.choice(alphabet))
            elif chars:
                del chars[min(where, len(chars) - 1)]
        text = "".join(chars)
        expected = loads_ok(text)
        assert is_json(text) is expected, repr(text)
        assert check_in_pieces(text, rng) is expected, repr(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "{",
        '{"a"}',
        '{"a":}',
        '{"a":1,}',
        "[1,]",
        "[,1]",
        "01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "tru",
        "nan",
        "infinity",
        "'single'",
        '"unterminated',
        '"bad \\x escape"',
        '"\\u12g4"',
        '"raw\ncontrol"',
        '{"a":1}{"b":2}',
        '{"a":1} x',
        "[1 2]",
        '{"a" 1}',
        '{1: "a"}',
        "\ufeff{}",  # a BOM: runnable writes none, and json.loads refuses it
        "[}",
        "{]",
        "[[[]]",
    ],
)
def test_invalid_documents_are_refused(text: str) -> None:
    assert not loads_ok(text)
    assert not is_json(text)


@pytest.mark.parametrize(
    "text",
    ["0", " -0.0e+0 ", '"x"', "null", "NaN", "-Infinity", "[]", "{}", '{"":{"":[]}}', "[1e5]"],
)
def test_small_valid_documents(text: str) -> None:
    assert loads_ok(text)
    assert is_json(text)


def test_any_nesting_depth_is_accepted_without_recursion() -> None:
    deep = '{"a":' * 20_000 + "[]" + "}" * 20_000
    with pytest.raises(RecursionError):
        json.loads(deep)  # why the sidecar does not use json.loads to check files
    assert is_json(deep)
    assert not is_json(deep[:-1])
    assert not is_json(deep + "}")


def test_the_error_says_where() -> None:
    checker = JsonChecker()
    checker.feed('{"a": [1, 2')
    with pytest.raises(NotJson) as caught:
        checker.feed("}")
    assert caught.value.position == len('{"a": [1, 2')
    assert "expected ','" in str(caught.value)


def test_memory_does_not_hold_the_pieces() -> None:
    checker = JsonChecker()
    checker.feed('{"big": "')
    for _ in range(100):
        checker.feed("x" * 100_000)  # one 10 MB string, in pieces
        assert len(checker._tail) < 16
    checker.feed('"}')
    checker.finish()
