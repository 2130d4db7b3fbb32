"""Live-query predicates: one implementation shared by the server and the client (PROTOCOL §4.7, §5.11).

Building predicates::

    from topgun import P
    pred = P.and_(P.eq("done", False), P.gt("prio", 2))
    # {"op": "and", "children": [{"op": "eq", "attribute": "done", "value": False}, ...]}

The builder produces exactly the wire ``PredicateNode`` dicts. Evaluating::

    matches(value, where={"owner": "ann"}, predicate=pred)     # one-off
    f = compile_filter(where, pred)                            # hot path: compile once
    f(value)

Ordering (§5.11 item 6) is exposed as :func:`sort_key` / :func:`make_sort_key`, which
turn a record into a tuple that Python compares in query order.

Regular expressions: Python's :mod:`re` backtracks and has no timeout, so a
pattern such as ``(a+)+$`` can take exponential time. Patterns are therefore
*not* run with :mod:`re`. They are parsed with the standard library's regex
parser, compiled to a Thompson NFA and executed as a lazily built DFA: every
input character costs one cached transition (or one closure over at most
:data:`REGEX_MAX_NODES` NFA states when the transition is new), so matching is
linear in the input whatever the pattern. Constructs that need backtracking
(back-references, look-around, atomic groups, possessive repeats) are refused,
as are patterns longer than :data:`REGEX_MAX_PATTERN` characters and patterns
whose NFA would exceed :data:`REGEX_MAX_NODES` states (large counted repeats).
A refused pattern is an invalid query on the server and a false leaf elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from topgun.errors import ProtocolError

try:  # Python >= 3.11
    from re import _constants as _sre_c  # type: ignore[attr-defined]
    from re import _parser as _sre_p  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre_c  # type: ignore[no-redef]
    import sre_parse as _sre_p  # type: ignore[no-redef]

__all__ = [
    "LEAF_OPS",
    "OPS",
    "REGEX_MAX_NODES",
    "REGEX_MAX_PATTERN",
    "InvalidPredicateError",
    "P",
    "SafeRegex",
    "compare_values",
    "compile_filter",
    "compile_predicate",
    "get_field",
    "like_match",
    "like_to_regex",
    "make_sort_key",
    "matches",
    "normalize_sort",
    "project",
    "select",
    "sort_key",
    "sort_value_key",
    "sort_value_key_desc",
    "type_name",
    "values_equal",
]

#: Longest accepted regular expression, in characters.
REGEX_MAX_PATTERN = 512
#: Largest NFA a regular expression may compile to (counted repeats are expanded).
REGEX_MAX_NODES = 4096
#: Most DFA states cached per pattern before the cache is reset (bounds memory, not time).
_REGEX_MAX_DFA_STATES = 2048

#: Every leaf operator of §4.7.
LEAF_OPS = frozenset({
    "eq", "neq", "gt", "gte", "lt", "lte", "like", "regex", "in", "between", "isNull", "isNotNull",
    "contains", "containsAll", "containsAny", "startsWith", "endsWith",
})
#: Every operator of §4.7 (leaves and connectives).
OPS = LEAF_OPS | {"and", "or", "not"}


class InvalidPredicateError(ProtocolError):
    """A predicate tree or query part is malformed, or a regex was refused (``INVALID_QUERY``)."""


_MISSING: Any = object()

# ---------------------------------------------------------------------------------------------
# Builder


class P:
    """Builder of wire ``PredicateNode`` dicts (§4.7). Every method returns a plain ``dict``."""

    @staticmethod
    def _leaf(op: str, attribute: str, value: Any = _MISSING) -> dict[str, Any]:
        node: dict[str, Any] = {"op": op, "attribute": attribute}
        if value is not _MISSING:
            node["value"] = value
        return node

    @staticmethod
    def eq(attribute: str, value: Any) -> dict[str, Any]:
        """``attribute == value``."""
        return P._leaf("eq", attribute, value)

    @staticmethod
    def neq(attribute: str, value: Any) -> dict[str, Any]:
        """``attribute != value`` (false when the field is missing or nil)."""
        return P._leaf("neq", attribute, value)

    @staticmethod
    def gt(attribute: str, value: Any) -> dict[str, Any]:
        """``attribute > value`` (numbers or strings)."""
        return P._leaf("gt", attribute, value)

    @staticmethod
    def gte(attribute: str, value: Any) -> dict[str, Any]:
        """``attribute >= value``."""
        return P._leaf("gte", attribute, value)

    @staticmethod
    def lt(attribute: str, value: Any) -> dict[str, Any]:
        """``attribute < value``."""
        return P._leaf("lt", attribute, value)

    @staticmethod
    def lte(attribute: str, value: Any) -> dict[str, Any]:
        """``attribute <= value``."""
        return P._leaf("lte", attribute, value)

    @staticmethod
    def like(attribute: str, pattern: str) -> dict[str, Any]:
        """SQL ``LIKE`` (``%``, ``_``), case-insensitive, whole string."""
        return P._leaf("like", attribute, pattern)

    @staticmethod
    def regex(attribute: str, pattern: str) -> dict[str, Any]:
        """Regular expression search (common JS/Rust/Python subset, no back-references or look-around)."""
        return P._leaf("regex", attribute, pattern)

    @staticmethod
    def in_(attribute: str, values: Sequence[Any]) -> dict[str, Any]:
        """``attribute`` equals one of ``values``."""
        return P._leaf("in", attribute, list(values))

    @staticmethod
    def between(attribute: str, low: Any, high: Any) -> dict[str, Any]:
        """``low <= attribute <= high``."""
        return P._leaf("between", attribute, [low, high])

    @staticmethod
    def is_null(attribute: str) -> dict[str, Any]:
        """The field is missing or nil."""
        return P._leaf("isNull", attribute)

    @staticmethod
    def is_not_null(attribute: str) -> dict[str, Any]:
        """The field is present and not nil."""
        return P._leaf("isNotNull", attribute)

    @staticmethod
    def contains(attribute: str, value: Any) -> dict[str, Any]:
        """Case-insensitive substring (string field) or element (array field)."""
        return P._leaf("contains", attribute, value)

    @staticmethod
    def contains_all(attribute: str, values: Sequence[Any]) -> dict[str, Any]:
        """Every item is a substring / element."""
        return P._leaf("containsAll", attribute, list(values))

    @staticmethod
    def contains_any(attribute: str, values: Sequence[Any]) -> dict[str, Any]:
        """Some item is a substring / element."""
        return P._leaf("containsAny", attribute, list(values))

    @staticmethod
    def starts_with(attribute: str, prefix: str) -> dict[str, Any]:
        """Case-sensitive prefix."""
        return P._leaf("startsWith", attribute, prefix)

    @staticmethod
    def ends_with(attribute: str, suffix: str) -> dict[str, Any]:
        """Case-sensitive suffix."""
        return P._leaf("endsWith", attribute, suffix)

    @staticmethod
    def and_(*children: dict[str, Any]) -> dict[str, Any]:
        """All children true (true when empty)."""
        return {"op": "and", "children": list(children)}

    @staticmethod
    def or_(*children: dict[str, Any]) -> dict[str, Any]:
        """Any child true (false when empty)."""
        return {"op": "or", "children": list(children)}

    @staticmethod
    def not_(child: dict[str, Any]) -> dict[str, Any]:
        """Negation of ``child``."""
        return {"op": "not", "children": [child]}

    # camelCase spellings, matching the wire operator names
    isNull = is_null
    isNotNull = is_not_null
    containsAll = contains_all
    containsAny = contains_any
    startsWith = starts_with
    endsWith = ends_with


# ---------------------------------------------------------------------------------------------
# Values


def _is_number(v: Any) -> bool:
    return (type(v) is int or type(v) is float) or (
        isinstance(v, (int, float)) and not isinstance(v, bool)
    )


def type_name(v: Any) -> str:
    """The MsgPack type class of a decoded value, as used by the type-mix order of §5.11 item 6."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "binary"
    return "ext"


def values_equal(a: Any, b: Any) -> bool:
    """Protocol equality: numbers numerically across int/float (never equal to booleans),
    strings and booleans by value, maps and arrays structurally."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)):
        return isinstance(b, (int, float)) and a == b
    if isinstance(a, str):
        return isinstance(b, str) and a == b
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return False
        return all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if not isinstance(b, dict) or len(a) != len(b):
            return False
        for k, x in a.items():
            y = b.get(k, _MISSING)
            if y is _MISSING or not values_equal(x, y):
                return False
        return True
    if isinstance(b, (int, float, str, list, tuple, dict)):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def compare_values(a: Any, b: Any) -> int | None:
    """Ordered comparison of §4.7: -1/0/1 when both are numbers or both strings, else ``None``."""
    if _is_number(a) and _is_number(b):
        if a != a or b != b:  # NaN compares false to everything
            return None
        return -1 if a < b else (1 if a > b else 0)
    if isinstance(a, str) and isinstance(b, str):
        return -1 if a < b else (1 if a > b else 0)
    return None


def get_field(value: Any, attribute: str) -> Any:
    """Resolve ``attribute`` in a record value: a top-level key wins, else a dotted path.

    Returns ``None`` for a missing field (missing and nil are alike, §4.7).
    """
    if not isinstance(value, dict):
        return None
    v = value.get(attribute, _MISSING)
    if v is not _MISSING:
        return v
    if "." not in attribute:
        return None
    cur: Any = value
    for part in attribute.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
        if cur is None:
            return None
    return cur


def project(value: Any, fields: Sequence[str] | None) -> Any:
    """Keep only the top-level ``fields`` of a map value (non-map values pass unchanged)."""
    if not fields or not isinstance(value, dict):
        return value
    return {f: value[f] for f in fields if f in value}


# ---------------------------------------------------------------------------------------------
# LIKE


def like_to_regex(pattern: str) -> str:
    """Translate a SQL ``LIKE`` pattern to an (anchored-by-fullmatch) regular expression.

    ``%`` → ``.*``, ``_`` → ``.``, everything else literal. Use with ``re.fullmatch`` and
    ``re.IGNORECASE | re.DOTALL``. :func:`like_match` is the linear-time evaluator; this
    translation documents the semantics and serves as a test oracle.
    """
    import re

    out = []
    for ch in pattern:
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _seg_match_at(s: str, i: int, seg: str) -> bool:
    for j, c in enumerate(seg):
        if c != "_" and s[i + j] != c:
            return False
    return True


def _seg_find(s: str, seg: str, start: int) -> int:
    if "_" not in seg:
        return s.find(seg, start)
    # Anchor on the longest literal run so the scan stays near-linear.
    best, best_off = "", 0
    for off, run in _literal_runs(seg):
        if len(run) > len(best):
            best, best_off = run, off
    last = len(s) - len(seg)
    if not best:
        return start if start <= last else -1
    pos = s.find(best, start + best_off)
    while pos != -1:
        i = pos - best_off
        if i > last:
            return -1
        if _seg_match_at(s, i, seg):
            return i
        pos = s.find(best, pos + 1)
    return -1


def _literal_runs(seg: str) -> list[tuple[int, str]]:
    runs: list[tuple[int, str]] = []
    start = None
    for i, c in enumerate(seg + "_"):
        if c != "_":
            if start is None:
                start = i
        elif start is not None:
            runs.append((start, seg[start:i]))
            start = None
    return runs


def like_match(text: str, pattern: str) -> bool:
    """SQL ``LIKE``: ``%`` any run, ``_`` one character, case-insensitive, whole string.

    Greedy-leftmost segment matching: each ``%``-separated segment has a fixed length, so
    its leftmost occurrence is always the best choice; no backtracking is needed.
    """
    s = text.lower()
    segs = pattern.lower().split("%")
    if len(segs) == 1:
        seg = segs[0]
        return len(s) == len(seg) and _seg_match_at(s, 0, seg)
    first, last, middle = segs[0], segs[-1], segs[1:-1]
    if len(first) + len(last) > len(s):
        return False
    if not _seg_match_at(s, 0, first):
        return False
    end_limit = len(s) - len(last)
    if not _seg_match_at(s, end_limit, last):
        return False
    pos = len(first)
    for seg in middle:
        if not seg:
            continue
        i = _seg_find(s[:end_limit], seg, pos)
        if i == -1:
            return False
        pos = i + len(seg)
    return pos <= end_limit


# ---------------------------------------------------------------------------------------------
# Regular expressions: Thompson NFA + lazy DFA (linear time)

_K_CHAR, _K_SPLIT, _K_ASSERT, _K_MATCH = 0, 1, 2, 3
_A_BEGIN, _A_END, _A_BOUNDARY, _A_NON_BOUNDARY = 0, 1, 2, 3
_FLAG_I = int(_sre_c.SRE_FLAG_IGNORECASE)
_FLAG_S = int(_sre_c.SRE_FLAG_DOTALL)
_FLAG_M = int(_sre_c.SRE_FLAG_MULTILINE)
_FLAG_X = int(_sre_c.SRE_FLAG_VERBOSE)
_FLAG_U = int(_sre_c.SRE_FLAG_UNICODE)
_ALLOWED_FLAGS = _FLAG_I | _FLAG_S | _FLAG_X | _FLAG_U


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    _sre_c.CATEGORY_DIGIT: str.isdecimal,
    _sre_c.CATEGORY_NOT_DIGIT: lambda c: not c.isdecimal(),
    _sre_c.CATEGORY_SPACE: str.isspace,
    _sre_c.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    _sre_c.CATEGORY_WORD: _is_word,
    _sre_c.CATEGORY_NOT_WORD: lambda c: not _is_word(c),
}


def _case_variants(ch: str) -> tuple[str, ...]:
    return (ch, ch.lower(), ch.upper(), ch.swapcase())


class _RegexRefused(Exception):
    pass


class _NFABuilder:
    def __init__(self) -> None:
        self.kind: list[int] = []
        self.arg: list[Any] = []
        self.out1: list[int] = []
        self.out2: list[int] = []

    def node(self, kind: int, arg: Any = None, out1: int = -1, out2: int = -1) -> int:
        if len(self.kind) >= REGEX_MAX_NODES:
            raise _RegexRefused(f"regular expression too large (more than {REGEX_MAX_NODES} states)")
        self.kind.append(kind)
        self.arg.append(arg)
        self.out1.append(out1)
        self.out2.append(out2)
        return len(self.kind) - 1

    def seq(self, items: Any, nxt: int, flags: int) -> int:
        for item in reversed(list(items)):
            nxt = self.item(item, nxt, flags)
        return nxt

    def item(self, item: tuple[Any, Any], nxt: int, flags: int) -> int:
        op, av = item
        c = _sre_c
        if op is c.LITERAL or op is c.NOT_LITERAL:
            return self.node(_K_CHAR, _char_pred(op is c.NOT_LITERAL, [(c.LITERAL, av)], flags), nxt)
        if op is c.ANY:
            dotall = bool(flags & _FLAG_S)
            return self.node(_K_CHAR, (lambda ch: True) if dotall else (lambda ch: ch != "\n"), nxt)
        if op is c.IN:
            negate = bool(av) and av[0][0] is c.NEGATE
            return self.node(_K_CHAR, _char_pred(negate, av[1:] if negate else av, flags), nxt)
        if op is c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if (add_flags | del_flags) & ~_ALLOWED_FLAGS:
                raise _RegexRefused("unsupported inline flag")
            return self.seq(sub, nxt, (flags | add_flags) & ~del_flags)
        if op is c.BRANCH:
            starts = [self.seq(alt, nxt, flags) for alt in av[1]]
            head = starts[-1]
            for s in reversed(starts[:-1]):
                head = self.node(_K_SPLIT, None, s, head)
            return head
        if op is c.MAX_REPEAT or op is c.MIN_REPEAT:
            lo, hi, sub = av
            cur = nxt
            if hi is c.MAXREPEAT:
                loop = self.node(_K_SPLIT, None, -1, nxt)
                self.out1[loop] = self.seq(sub, loop, flags)
                cur = loop
            else:
                for _ in range(int(hi) - int(lo)):
                    body = self.seq(sub, cur, flags)
                    cur = self.node(_K_SPLIT, None, body, nxt)
            for _ in range(int(lo)):
                cur = self.seq(sub, cur, flags)
            return cur
        if op is c.AT:
            kind = {
                c.AT_BEGINNING: _A_BEGIN,
                c.AT_BEGINNING_STRING: _A_BEGIN,
                c.AT_END: _A_END,
                c.AT_END_STRING: _A_END,
                c.AT_BOUNDARY: _A_BOUNDARY,
                c.AT_NON_BOUNDARY: _A_NON_BOUNDARY,
            }.get(av)
            if kind is None:
                raise _RegexRefused(f"unsupported anchor {av}")
            return self.node(_K_ASSERT, kind, nxt)
        raise _RegexRefused(f"unsupported regular expression construct {op}")


def _char_pred(negate: bool, items: Sequence[tuple[Any, Any]], flags: int) -> Callable[[str], bool]:
    c = _sre_c
    chars: set[str] = set()
    ranges: list[tuple[int, int]] = []
    cats: list[Callable[[str], bool]] = []
    for op, av in items:
        if op is c.LITERAL:
            chars.add(chr(av))
        elif op is c.RANGE:
            ranges.append((int(av[0]), int(av[1])))
        elif op is c.CATEGORY:
            fn = _CATEGORIES.get(av)
            if fn is None:
                raise _RegexRefused(f"unsupported character category {av}")
            cats.append(fn)
        else:
            raise _RegexRefused(f"unsupported set member {op}")
    icase = bool(flags & _FLAG_I)

    def one(ch: str) -> bool:
        if ch in chars:
            return True
        o = ord(ch)
        for lo, hi in ranges:
            if lo <= o <= hi:
                return True
        return any(fn(ch) for fn in cats)

    if icase:
        def test(ch: str) -> bool:
            return any(one(v) for v in _case_variants(ch) if len(v) == 1)
    else:
        test = one
    if negate:
        return lambda ch: not test(ch)
    return test


class SafeRegex:
    """A regular expression searched in linear time (see the module docstring).

    ``SafeRegex(pattern).search(text)`` is true when the pattern matches somewhere in
    ``text``. Raises :class:`InvalidPredicateError` for refused patterns.
    """

    __slots__ = ("_arg", "_info", "_kind", "_match", "_out1", "_out2", "_start", "_states", "_trans",
                 "pattern")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise InvalidPredicateError("regex operand must be a string")
        if len(pattern) > REGEX_MAX_PATTERN:
            raise InvalidPredicateError(f"regular expression longer than {REGEX_MAX_PATTERN} characters")
        try:
            parsed = _sre_p.parse(pattern)
        except Exception as exc:
            raise InvalidPredicateError(f"invalid regular expression: {exc}") from None
        flags = int(parsed.state.flags)
        if flags & ~_ALLOWED_FLAGS:
            raise InvalidPredicateError("unsupported regular expression flag")
        b = _NFABuilder()
        try:
            match = b.node(_K_MATCH)
            start = b.seq(list(parsed), match, flags)
        except _RegexRefused as exc:
            raise InvalidPredicateError(str(exc)) from None
        except RecursionError:
            raise InvalidPredicateError("regular expression nested too deeply") from None
        self.pattern = pattern
        self._kind, self._arg, self._out1, self._out2 = b.kind, b.arg, b.out1, b.out2
        self._start = start
        self._match = match
        self._reset()

    def _reset(self) -> None:
        # DFA state = (pending NFA nodes, at_begin, prev_is_word); ids index _info.
        self._states: dict[tuple[frozenset[int], bool, bool], int] = {}
        self._info: list[tuple[frozenset[int], bool, bool]] = []
        self._trans: dict[tuple[int, str], Any] = {}

    def _closure(self, seeds: Iterable[int], ctx: tuple[bool, bool, bool, bool] | None) -> set[int]:
        """Nodes reachable through splits; assertions are followed only when ``ctx``
        (at_begin, at_end, prev_word, next_word) is given, otherwise kept pending."""
        kind, arg, out1, out2 = self._kind, self._arg, self._out1, self._out2
        seen: set[int] = set()
        stack = list(seeds)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            k = kind[n]
            if k == _K_SPLIT:
                stack.append(out1[n])
                stack.append(out2[n])
            elif k == _K_ASSERT and ctx is not None:
                at_begin, at_end, pw, nw = ctx
                a = arg[n]
                ok = (
                    at_begin if a == _A_BEGIN
                    else at_end if a == _A_END
                    else (pw != nw) if a == _A_BOUNDARY
                    else (pw == nw)
                )
                if ok:
                    stack.append(out1[n])
        return seen

    def _state(self, nodes: frozenset[int], at_begin: bool, prev_word: bool) -> int:
        key = (nodes, at_begin, prev_word)
        sid = self._states.get(key)
        if sid is None:
            if len(self._info) >= _REGEX_MAX_DFA_STATES:
                # Bound memory: start a fresh DFA; each new transition still costs O(NFA size).
                self._reset()
            sid = len(self._info)
            self._states[key] = sid
            self._info.append(key)
        return sid

    def search(self, text: str) -> bool:
        """True when the pattern matches somewhere in ``text`` (linear time)."""
        if not isinstance(text, str):
            return False
        sid = self._state(frozenset(self._closure((self._start,), None)), True, False)
        trans = self._trans
        for ch in text:
            nxt = trans.get((sid, ch))
            if nxt is None:
                nxt = self._step(sid, ch)
                if self._trans is trans:
                    trans[(sid, ch)] = nxt
                else:  # the DFA was reset while stepping; nxt belongs to the new one
                    trans = self._trans
            if nxt is True:
                return True
            sid = nxt
        nodes, at_begin, prev_word = self._info[sid]
        return self._match in self._closure(nodes, (at_begin, True, prev_word, False))

    def _step(self, sid: int, ch: str) -> Any:
        nodes, at_begin, prev_word = self._info[sid]
        nw = _is_word(ch)
        full = self._closure(nodes, (at_begin, False, prev_word, nw))
        if self._match in full:
            return True
        kind, arg, out1 = self._kind, self._arg, self._out1
        seeds = [out1[n] for n in full if kind[n] == _K_CHAR and arg[n](ch)]
        seeds.append(self._start)  # unanchored search: a match may start at the next position
        nxt = frozenset(self._closure(seeds, None))
        if self._match in nxt:
            return True
        return self._state(nxt, False, nw)


# ---------------------------------------------------------------------------------------------
# Compilation of predicate trees

Filter = Callable[[Any], bool]


def _false(_v: Any) -> bool:
    return False


def _true(_v: Any) -> bool:
    return True


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _leaf_test(op: str, x: Any, strict: bool) -> Callable[[Any], bool] | None:
    """``test(v) -> bool`` for a non-nil field value ``v`` and operand ``x`` (``None`` = always false)."""
    if op == "eq":
        if x is None:
            return None
        if isinstance(x, str):
            return lambda v: type(v) is str and v == x
        if _is_number(x):
            return lambda v: _is_number(v) and v == x
        return lambda v: values_equal(v, x)
    if op == "neq":
        if x is None:
            return None
        return lambda v: not values_equal(v, x)
    if op in ("gt", "gte", "lt", "lte"):
        if not (_is_number(x) or isinstance(x, str)):
            return None
        if op == "gt":
            return lambda v: compare_values(v, x) == 1
        if op == "gte":
            return lambda v: compare_values(v, x) in (0, 1)
        if op == "lt":
            return lambda v: compare_values(v, x) == -1
        return lambda v: compare_values(v, x) in (0, -1)
    if op == "between":
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            if strict:
                raise InvalidPredicateError("between needs value [low, high]")
            return None
        lo, hi = x
        return lambda v: compare_values(v, lo) in (0, 1) and compare_values(v, hi) in (0, -1)
    if op == "like":
        if not isinstance(x, str):
            return None
        return lambda v: isinstance(v, str) and like_match(v, x)
    if op == "regex":
        if not isinstance(x, str):
            if strict:
                raise InvalidPredicateError("regex operand must be a string")
            return None
        try:
            rx = SafeRegex(x)
        except InvalidPredicateError:
            if strict:
                raise
            return None
        return lambda v: isinstance(v, str) and rx.search(v)
    if op == "in":
        if isinstance(x, (list, tuple)):
            items = list(x)
            return lambda v: any(values_equal(v, e) for e in items) or (
                isinstance(v, (list, tuple)) and any(values_equal(e, x) for e in v)
            )
        return lambda v: isinstance(v, (list, tuple)) and any(values_equal(e, x) for e in v)
    if op == "contains":
        xl = x.lower() if isinstance(x, str) else None

        def contains(v: Any) -> bool:
            if isinstance(v, str):
                return xl is not None and xl in v.lower()
            if isinstance(v, (list, tuple)):
                return any(values_equal(e, x) for e in v)
            return False

        return contains
    if op in ("containsAll", "containsAny"):
        items = _as_list(x)
        lowered = [i.lower() if isinstance(i, str) else None for i in items]
        agg = all if op == "containsAll" else any

        def contains_many(v: Any) -> bool:
            if isinstance(v, str):
                s = v.lower()
                return agg(i is not None and i in s for i in lowered)
            if isinstance(v, (list, tuple)):
                return agg(any(values_equal(e, i) for e in v) for i in items)
            return False

        return contains_many
    if op == "startsWith":
        if not isinstance(x, str):
            return None
        return lambda v: isinstance(v, str) and v.startswith(x)
    if op == "endsWith":
        if not isinstance(x, str):
            return None
        return lambda v: isinstance(v, str) and v.endswith(x)
    return None


def compile_predicate(
    node: Mapping[str, Any] | None,
    *,
    auth: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> Filter:
    """Compile a ``PredicateNode`` tree into ``f(value) -> bool``.

    ``auth`` holds the caller's JWT claims for ``valueRef: "auth.<path>"`` operands (``None``
    in no-auth mode: such leaves are false). With ``strict`` malformed nodes and refused
    regular expressions raise :class:`InvalidPredicateError`; otherwise they evaluate false.
    Unknown operators are always false (§4.7).
    """
    if node is None:
        return _true
    if not isinstance(node, Mapping):
        if strict:
            raise InvalidPredicateError("predicate node must be a map")
        return _false
    op = node.get("op")
    if op in ("and", "or", "not"):
        raw = node.get("children") or []
        if not isinstance(raw, (list, tuple)):
            if strict:
                raise InvalidPredicateError(f"{op}.children must be an array")
            return _false
        kids = [compile_predicate(c, auth=auth, strict=strict) for c in raw]
        if op == "not":
            if not kids:
                return _true
            first = kids[0]
            return lambda v: not first(v)
        if op == "and":
            if not kids:
                return _true
            if len(kids) == 1:
                return kids[0]
            return lambda v: all(k(v) for k in kids)
        if not kids:
            return _false
        return lambda v: any(k(v) for k in kids)
    if not isinstance(op, str):
        if strict:
            raise InvalidPredicateError("predicate node needs an op")
        return _false
    attribute = node.get("attribute")
    if op not in LEAF_OPS:
        return _false
    if not isinstance(attribute, str):
        if strict:
            raise InvalidPredicateError(f"{op} needs an attribute")
        return _false
    value_ref = node.get("valueRef")
    if op == "isNull":
        return lambda v: get_field(v, attribute) is None
    if op == "isNotNull":
        return lambda v: get_field(v, attribute) is not None
    if isinstance(value_ref, str):
        return _compile_value_ref(op, attribute, value_ref, auth, strict)
    test = _leaf_test(op, node.get("value"), strict)
    if test is None:
        return _false
    if "." not in attribute:
        fast = _fast_flat_leaf(op, attribute, node.get("value"))
        if fast is not None:
            return fast

        def leaf_flat(v: Any) -> bool:
            if type(v) is not dict:
                return False
            f = v.get(attribute)
            return f is not None and test(f)
        return leaf_flat

    def leaf(v: Any) -> bool:
        f = get_field(v, attribute)
        return f is not None and test(f)

    return leaf


def _fast_flat_leaf(op: str, attribute: str, x: Any) -> Filter | None:
    """Fused leaves for the common cases (top-level field, scalar operand): one Python call per
    evaluation instead of three. They must agree exactly with the general leaves."""
    a = attribute
    if op == "eq" and type(x) is str:
        def eq_str(v: Any) -> bool:
            return type(v) is dict and v.get(a) == x and type(v.get(a)) is str
        return eq_str
    if op == "eq" and (type(x) is int or type(x) is float) and x == x:
        def eq_num(v: Any) -> bool:
            if type(v) is not dict:
                return False
            f = v.get(a)
            return (type(f) is int or type(f) is float) and f == x
        return eq_num
    if op == "eq" and type(x) is bool:
        def eq_bool(v: Any) -> bool:
            return type(v) is dict and v.get(a) is x
        return eq_bool
    num = type(x) is int or type(x) is float
    if op in ("gt", "gte", "lt", "lte") and (num or type(x) is str) and x == x:
        kind: Any = (int, float) if num else (str,)

        def rng(v: Any) -> bool:
            if type(v) is not dict:
                return False
            f = v.get(a)
            if type(f) not in kind or f != f:
                return False
            if op == "gt":
                return bool(f > x)
            if op == "gte":
                return bool(f >= x)
            if op == "lt":
                return bool(f < x)
            return bool(f <= x)
        return rng
    if op == "between" and isinstance(x, (list, tuple)) and len(x) == 2:
        lo, hi = x
        if all((type(b) is int or type(b) is float) and b == b for b in (lo, hi)):
            def between_num(v: Any) -> bool:
                if type(v) is not dict:
                    return False
                f = v.get(a)
                return (type(f) is int or type(f) is float) and lo <= f <= hi
            return between_num
        if type(lo) is str and type(hi) is str:
            def between_str(v: Any) -> bool:
                if type(v) is not dict:
                    return False
                f = v.get(a)
                return type(f) is str and lo <= f <= hi
            return between_str
    return None


def _compile_value_ref(
    op: str, attribute: str, ref: str, auth: Mapping[str, Any] | None, strict: bool
) -> Filter:
    source, _, path = ref.partition(".")
    if source == "auth":
        if auth is None:
            return _false
        operand = get_field(dict(auth), path) if path else None
        test = _leaf_test(op, operand, strict)
        if test is None:
            return _false
        t = test

        def leaf_auth(v: Any) -> bool:
            f = get_field(v, attribute)
            return f is not None and t(f)

        return leaf_auth
    if source == "data":
        def leaf_data(v: Any) -> bool:
            f = get_field(v, attribute)
            if f is None:
                return False
            t = _leaf_test(op, get_field(v, path), False)
            return t is not None and t(f)

        return leaf_data
    if strict:
        raise InvalidPredicateError("valueRef must start with 'data.' or 'auth.'")
    return _false


def compile_filter(
    where: Mapping[str, Any] | None = None,
    predicate: Mapping[str, Any] | None = None,
    *,
    auth: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> Filter:
    """Compile ``where`` (every field present and equal) AND ``predicate`` into ``f(value) -> bool``."""
    parts: list[Filter] = []
    if where:
        if not isinstance(where, Mapping):
            if strict:
                raise InvalidPredicateError("where must be a map")
            return _false
        for field_name, expected in where.items():
            parts.append(compile_predicate({"op": "eq", "attribute": field_name, "value": expected}))
    if predicate is not None:
        parts.append(compile_predicate(predicate, auth=auth, strict=strict))
    if not parts:
        return _true
    if len(parts) == 1:
        return parts[0]
    return lambda v: all(p(v) for p in parts)


def matches(
    value: Any,
    where: Mapping[str, Any] | None = None,
    predicate: Mapping[str, Any] | None = None,
    *,
    auth: Mapping[str, Any] | None = None,
) -> bool:
    """Whether a live record value satisfies ``where`` AND ``predicate`` (§4.7).

    A ``None`` value (tombstone or absent record) never matches. For repeated use,
    compile once with :func:`compile_filter`.
    """
    if value is None:
        return False
    return compile_filter(where, predicate, auth=auth)(value)


# ---------------------------------------------------------------------------------------------
# Ordering

_TYPE_RANK = {"array": 0, "binary": 1, "bool": 2, "ext": 3, "map": 4, "number": 5, "string": 6}
_NIL_RANK = 9


def sort_value_key(v: Any) -> tuple[Any, ...]:
    """Ascending key of one sort value (§5.11 item 6): numbers numerically, strings by code
    point, other type mixes by type name, nil last. Values of the same non-scalar type tie.

    Keys are tuples of plain scalars so that Python compares them at C speed.
    """
    if v is None:
        return (_NIL_RANK,)
    if isinstance(v, bool):
        return (2, int(v))
    if isinstance(v, (int, float)):
        if v != v:
            return (5, 1)
        return (5, 0, v)
    if isinstance(v, str):
        return (6, v)
    if isinstance(v, (bytes, bytearray)):
        return (1, bytes(v))
    return (_TYPE_RANK[type_name(v)],)


def sort_value_key_desc(v: Any) -> tuple[Any, ...]:
    """The exact reverse of :func:`sort_value_key`, also as a tuple of plain scalars.

    Every component is negated; strings and byte strings become tuples of negated code
    points closed by ``1`` (greater than every negated code point), so that a prefix sorts
    after its extensions, as descending order requires.
    """
    if v is None:
        return (-_NIL_RANK,)
    if isinstance(v, bool):
        return (-2, -int(v))
    if isinstance(v, (int, float)):
        if v != v:
            return (-5, -1)
        return (-5, 0, -v)
    if isinstance(v, str):
        return (-6, (*[-ord(c) for c in v], 1))
    if isinstance(v, (bytes, bytearray)):
        return (-1, (*[-b for b in v], 1))
    return (-_TYPE_RANK[type_name(v)],)


def normalize_sort(sort: Any) -> list[tuple[str, str]]:
    """Accept every sort spelling and return ``[(field, "asc"|"desc"), ...]``.

    Accepted: the wire array ``[{"field", "direction"}]``, the TS schema map
    ``{field: direction}``, ``[(field, direction)]`` pairs, or objects with
    ``field``/``direction`` attributes (``topgun.protocol.SortKey``).
    """
    if not sort:
        return []
    out: list[tuple[str, str]] = []
    items: Iterable[Any] = sort.items() if isinstance(sort, Mapping) else sort
    for item in items:
        if isinstance(item, Mapping):
            f, d = item.get("field"), item.get("direction", "asc")
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            f, d = item
        else:
            f, d = getattr(item, "field", None), getattr(item, "direction", "asc")
        d = getattr(d, "value", d)
        if not isinstance(f, str) or d not in ("asc", "desc"):
            raise InvalidPredicateError(f"invalid sort entry {item!r}")
        out.append((f, str(d)))
    return out


def make_sort_key(sort: Any) -> Callable[[str, Any], tuple[Any, ...]]:
    """``key(record_key, value) -> tuple``: Python order of the tuples is the query order,
    ties broken by record key ascending (§5.11 item 6; ``_key`` names the record key)."""
    spec = normalize_sort(sort)
    if not spec:
        return lambda k, v: (k,)
    getters: list[tuple[str, Callable[[Any], tuple[Any, ...]], bool]] = [
        (f, sort_value_key_desc if d == "desc" else sort_value_key, "." in f) for f, d in spec
    ]
    if len(getters) == 1:
        f, conv, dotted = getters[0]
        if f == "_key":
            return lambda k, v: (conv(k), k)
        if not dotted:
            def key1(k: str, v: Any) -> tuple[Any, ...]:
                return (conv(v.get(f) if type(v) is dict else None), k)
            return key1

    def key(k: str, v: Any) -> tuple[Any, ...]:
        parts: list[Any] = [conv(k if f == "_key" else get_field(v, f)) for f, conv, _ in getters]
        parts.append(k)
        return tuple(parts)

    return key


def sort_key(record_key: str, value: Any, sort: Any = None) -> tuple[Any, ...]:
    """One-off form of :func:`make_sort_key`."""
    return make_sort_key(sort)(record_key, value)


# ---------------------------------------------------------------------------------------------
# Whole-query evaluation over a local replica


def select(
    items: Iterable[tuple[str, Any]],
    *,
    where: Mapping[str, Any] | None = None,
    predicate: Mapping[str, Any] | None = None,
    sort: Any = None,
    limit: int | None = None,
    fields: Sequence[str] | None = None,
    auth: Mapping[str, Any] | None = None,
) -> list[tuple[str, Any]]:
    """Evaluate a (non-aggregate) query over ``(key, value)`` pairs: filter, order, cut, project.

    The same semantics as the server's snapshot without a cursor; ``None`` values (tombstones)
    are skipped.
    """
    f = compile_filter(where, predicate, auth=auth)
    key = make_sort_key(sort)
    rows = [(key(k, v), k, v) for k, v in items if v is not None and f(v)]
    if limit is not None and 0 < limit < len(rows):
        import heapq

        rows = heapq.nsmallest(limit, rows, key=lambda r: r[0])
    else:
        rows.sort(key=lambda r: r[0])
    return [(k, project(v, fields)) for _, k, v in rows]
