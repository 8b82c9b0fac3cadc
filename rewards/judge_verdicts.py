"""The judge's side of the code judge: run each test against what the host exposes; one verdict each.

Run as a script in the judge's own sandbox, after the text of rewards/judge_codec.py (never imported
by the project). Its first stdin line is the host's setup (JSON): the tests, the modules to import
for them (read by the host from the solution's source), and the solution's names that may reach
them. Its second line is the solution's hello, relayed by the host after its seal verified. Every
question to the solution goes out as a line `? <payload>`; each answer comes back as a payload line,
or `x <reason>` when the solution gave none (missing, unsealed, too large, too late).

A test fails when it raises, and also when any answer it needed was missing or malformed, even if
the test catches that (the reason is reported with its verdict).
"""

import binascii
import builtins
import importlib
import json
import marshal
import math
import sys

channel = sys.stdout
sys.stdout = sys.stderr
setup = json.loads(sys.stdin.buffer.readline())
trouble = {"reason": None}  # why the current test lost an answer


class RemoteFailure(BaseException):
    """The solution gave no usable answer (not an Exception: a test's `except Exception` cannot hide it)."""


def fail(reason):
    trouble["reason"] = trouble["reason"] or reason
    raise RemoteFailure(reason)


def receive():
    line = sys.stdin.buffer.readline().rstrip(b"\n")
    if not line or line.startswith(b"x "):
        fail(line[2:202].decode("utf-8", "replace") or "no answer")
    try:
        return marshal.loads(binascii.a2b_base64(line))
    except Exception:
        fail("malformed answer")


def ask(target, op, args=(), extra=None):
    question = (target[0], target[1], op, [encode(a) for a in args], extra)
    channel.write("? " + binascii.b2a_base64(marshal.dumps(question, 4), newline=False).decode() + "\n")
    channel.flush()
    answer = receive()
    if type(answer) is not tuple or not answer:
        fail("malformed answer")
    if answer[0] == "raised" and len(answer) == 3:
        kind = getattr(builtins, str(answer[1]), None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind(str(answer[2]))
        raise RuntimeError("%s: %s" % (answer[1], answer[2]))
    if answer[0] == "failed":
        fail(str(answer[1:])[:200])
    try:
        if answer[0] == "items" and len(answer) == 3:
            return [decode(x) for x in answer[1]], answer[2] is True
        if answer[0] == "ok" and len(answer) == 2:
            return decode(answer[1])
    except ValueError as exc:
        fail(str(exc))
    fail("malformed answer")


def address(obj):
    return object.__getattribute__(obj, "_address")


def unsendable(value):
    if isinstance(value, Remote) and address(value)[0] == "ref":
        return address(value)[1]
    raise TypeError("cannot send %s to the solution" % type(value).__name__)


drawn = {}  # handle number -> items read ahead of the test's demand, and whether the iterator ended
MAX_READ_AHEAD = 256


class Remote:
    """A function or object living in the solution's process; every use is a question."""

    def __init__(self, where):
        object.__setattr__(self, "_address", where)

    def __call__(self, *args, **kwargs):
        return ask(address(self), "call", args, sorted((k, encode(v)) for k, v in kwargs.items()))

    def __getattr__(self, attr):
        return ask(address(self), "getattr", (), attr)

    def __eq__(self, other):  # two solution objects: the solution's own equality; never a test's value
        if isinstance(other, Remote) and address(other)[0] == "ref":
            return ask(address(self), "eq", (other,)) is True
        return NotImplemented

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = object.__hash__

    def __bool__(self):
        return ask(address(self), "bool") is True

    def __len__(self):
        return ask(address(self), "len")

    def __getitem__(self, index):
        return ask(address(self), "getitem", (index,))

    def __contains__(self, item):
        return ask(address(self), "contains", (item,)) is True

    def __iter__(self):
        return ask(address(self), "iter")

    def __next__(self):
        """Items come on demand: the first alone, then in read-ahead chunks that double up to
        MAX_READ_AHEAD, so an infinite generator costs only what the test takes (and a little more)."""
        where = address(self)
        if where[0] != "ref":
            raise TypeError("'function' object is not an iterator")
        queue = drawn.setdefault(where[1], {"items": [], "ended": False, "chunk": 1})
        if not queue["items"] and not queue["ended"]:
            items, ended = ask(where, "next", (), queue["chunk"])
            queue["items"], queue["ended"] = list(items), ended
            queue["chunk"] = min(2 * queue["chunk"], MAX_READ_AHEAD)
        if not queue["items"]:
            raise StopIteration
        return queue["items"].pop(0)

    def __str__(self):
        return ask(address(self), "str")

    def __repr__(self):
        return ask(address(self), "repr")


encode, decode = make_codec(unsendable, lambda n: Remote(("ref", n)), math.nan)  # noqa: F821 (judge_codec.py's text)


def no_handle(number):
    raise ValueError("a handle where a plain value was expected")


_, pure = make_codec(unsendable, no_handle, math.nan)  # noqa: F821 — a value without handles (safe to show any test)


def imported(module, attribute):
    value = importlib.import_module(module)
    if attribute == "*":
        names = getattr(value, "__all__", [n for n in vars(value) if not n.startswith("_")])
        return {n: getattr(value, n) for n in names if hasattr(value, n)}
    return value if attribute is None else getattr(value, attribute)


def namespace(hello):
    """The names every test starts from: the real imports, then the solution's names the host lets through."""
    base = {}
    for name, (module, attribute) in setup["imports"].items():
        try:
            value = imported(module, attribute)
        except Exception:
            continue
        if attribute == "*":
            base.update(value)
        else:
            base[name] = value
    exposed = set(setup["exposed"])
    names = hello[1] if type(hello[1]) is dict else {}
    for name, tag in names.items():
        if (type(name) is not str or not name.isidentifier() or name.startswith("__")
                or hasattr(builtins, name) or name in base):
            continue
        try:
            if tag == ("callable",):
                if name in exposed:
                    base[name] = Remote(("name", name))
            else:
                base[name] = decode(tag) if name in exposed else pure(tag)
        except (ValueError, RemoteFailure):
            pass
    return base


def verdicts():
    try:
        hello = receive()
    except RemoteFailure:
        hello = None
    loaded = type(hello) is tuple and len(hello) == 2 and hello[0] == "hello"
    base = namespace(hello) if loaded else None
    for index, test in enumerate(setup["tests"]):
        trouble["reason"] = None if base is not None else "the solution did not load"
        passed = False
        if base is not None:
            scope = dict(base, __name__="__test__", __builtins__=builtins)
            try:
                exec(compile(test, "<test %d>" % index, "exec"), scope)  # sandbox-ok: dataset tests, in the judge's sandbox
                passed = True
            except BaseException:
                passed = False
        if trouble["reason"]:
            passed = False
        channel.write(json.dumps({"test": index, "passed": passed, "reason": trouble["reason"]}) + "\n")
        channel.flush()
    channel.write(json.dumps({"done": True}) + "\n")
    channel.flush()


verdicts()
