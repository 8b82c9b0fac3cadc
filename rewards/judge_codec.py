"""The value encoding both sides of the code judge share (rewards/judge.py).

A value crosses between the two sandboxes as a tag: nested tuples and lists of exact builtin
types, written with `marshal` (C code, nothing a solution can patch once bound). Values of the
standard types a test can compare cross by value; anything else crosses as a handle ("ref", n)
to an object that stays where it was made.

Both directions are bounded, so a hostile value costs only its own answer: at most MAX_DEPTH
levels of nesting, MAX_ITEMS values and MAX_BYTES characters of str / bytes in one answer. A
violation raises `ValueError` naming the bound.

This file is also sent as source text to both sandboxes (they run `python -I -S`, without the
project on their path), so it imports nothing but the standard library at call time.
`make_codec` binds every builtin and method it uses when it is called: the solution's side calls
it before the solution runs, so a solution that later replaces `isinstance`, `list.copy` or
`collections.Counter` in its own process does not change what the codec writes.
"""

MAX_DEPTH = 100  # levels of nesting in one value
MAX_ITEMS = 1_000_000  # values in one answer, all levels together
MAX_BYTES = 16 << 20  # characters of str / bytes in one answer (a large honest result is judged by value up to this)


def make_codec(ref, handle, canonical_nan):
    """(encode, decode) for one side. `ref(obj)` gives a handle's number for an object that does not
    cross by value; `handle(n)` makes what ("ref", n) stands for on this side. `canonical_nan`: the
    process's `math.nan`, so the same nan object stays the same object (plain Python's identity rule)."""
    import collections

    max_depth, max_items, max_bytes = MAX_DEPTH, MAX_ITEMS, MAX_BYTES

    _type, _issubclass, _len, _bool, _bytearray = type, issubclass, len, bool, bytearray
    _int, _float, _complex, _str, _bytes, _list, _tuple, _dict, _set, _frozenset, _range = (
        int, float, complex, str, bytes, list, tuple, dict, set, frozenset, range)
    _ValueError = ValueError
    counter, ordered, default, deque = (collections.Counter, collections.OrderedDict,
                                        collections.defaultdict, collections.deque)
    int_copy, float_copy, str_copy = int.__int__, float.__float__, str.__str__
    bytes_copy, bytearray_copy = bytes.__add__, bytearray.copy
    real, imag = complex.real.__get__, complex.imag.__get__
    list_copy, tuple_slice, dict_copy, dict_items = list.copy, tuple.__getitem__, dict.copy, dict.items
    set_iter, frozenset_iter, deque_iter = set.__iter__, frozenset.__iter__, deque.__iter__
    set_copy, frozenset_copy = set.copy, frozenset.copy
    everything = slice(None)
    dict_kinds = ((counter, "Counter"), (ordered, "OrderedDict"), (default, "defaultdict"))

    def charge(budget, items, chars=0):
        budget[0] -= items
        budget[1] -= chars
        if budget[0] < 0:
            raise _ValueError("more than %d values in one answer" % max_items)
        if budget[1] < 0:
            raise _ValueError("more than %d bytes of text in one answer" % max_bytes)

    def enc(v, depth, budget):
        if depth > max_depth:
            raise _ValueError("nested deeper than %d levels" % max_depth)
        charge(budget, 1)
        t = _type(v)
        if v is None:
            return ("none",)
        if t is _bool:
            return ("bool", v is True)
        if _issubclass(t, _int):
            return ("int", int_copy(v))
        if _issubclass(t, _float):
            x = float_copy(v)
            return ("nan", v is canonical_nan) if x != x else ("float", x)
        if _issubclass(t, _complex):
            return ("complex", float_copy(real(v)), float_copy(imag(v)))
        if _issubclass(t, _str):
            s = str_copy(v)
            charge(budget, 0, _len(s))
            return ("str", s)
        if _issubclass(t, (_bytes, _bytearray)):
            b = bytes_copy(v, b"") if _issubclass(t, _bytes) else _bytes(bytearray_copy(v))
            charge(budget, 0, _len(b))
            return ("bytes", b)
        down = depth + 1
        if _issubclass(t, _list):
            return ("list", [enc(x, down, budget) for x in list_copy(v)])
        if _issubclass(t, _tuple):
            return ("tuple", [enc(x, down, budget) for x in tuple_slice(v, everything)])
        if _issubclass(t, _dict):
            kind = "dict"
            for base, name in dict_kinds:
                if t is base:
                    kind = name
            return ("dict", kind, [(enc(k, down, budget), enc(x, down, budget)) for k, x in dict_items(dict_copy(v))])
        if _issubclass(t, _frozenset):
            return ("frozenset", [enc(x, down, budget) for x in frozenset_iter(frozenset_copy(v))])
        if _issubclass(t, _set):
            return ("set", [enc(x, down, budget) for x in set_iter(set_copy(v))])
        if t is _range:
            return ("range", v.start, v.stop, v.step)
        if t is deque:
            return ("deque", [enc(x, down, budget) for x in deque_iter(v)])
        return ("ref", ref(v))

    def encode(value):
        return enc(value, 0, [max_items, max_bytes])

    def exact(value, *types):
        if _type(value) not in types:
            raise _ValueError("malformed value")
        return value

    def many(items, depth, budget):
        return [dec(x, depth + 1, budget) for x in exact(items, _list)]

    def dec(tag, depth, budget):
        if depth > max_depth:
            raise _ValueError("nested deeper than %d levels" % max_depth)
        charge(budget, 1)
        exact(tag, _tuple)
        if not tag or _type(tag[0]) is not _str:
            raise _ValueError("malformed value")
        kind, rest = tag[0], tag[1:]
        if kind == "none" and not rest:
            return None
        if kind in ("bool", "int", "float", "str", "bytes", "ref") and _len(rest) == 1:
            value = exact(rest[0], {"bool": _bool, "int": _int, "float": _float, "str": _str,
                                    "bytes": _bytes, "ref": _int}[kind])
            if kind in ("str", "bytes"):
                charge(budget, 0, _len(value))
            return handle(value) if kind == "ref" else value
        if kind == "nan" and _len(rest) == 1:
            return canonical_nan if exact(rest[0], _bool) else _float("nan")
        if kind == "complex" and _len(rest) == 2:
            return _complex(exact(rest[0], _float), exact(rest[1], _float))
        if kind in ("list", "tuple", "set", "frozenset", "deque") and _len(rest) == 1:
            items = many(rest[0], depth, budget)
            return {"list": _list, "tuple": _tuple, "set": _set, "frozenset": _frozenset, "deque": deque}[kind](items)
        if kind == "dict" and _len(rest) == 2:
            pairs = []
            for pair in exact(rest[1], _list):
                if _type(pair) is not _tuple or _len(pair) != 2:
                    raise _ValueError("malformed value")
                pairs.append((dec(pair[0], depth + 1, budget), dec(pair[1], depth + 1, budget)))
            name = exact(rest[0], _str)
            if name == "Counter":
                return counter(_dict(pairs))
            if name == "OrderedDict":
                return ordered(pairs)
            if name == "defaultdict":
                return default(None, pairs)
            return _dict(pairs)
        if kind == "range" and _len(rest) == 3:
            return _range(*[exact(x, _int) for x in rest])
        raise _ValueError("malformed value")

    def decode(tag):
        return dec(tag, 0, [max_items, max_bytes])

    return encode, decode
