"""The solution's side of the code judge: load the solution, then answer the judge's questions.

Run as a script in the solution's sandbox, after the text of rewards/judge_codec.py (it is never
imported by the project). What keeps the answers out of the solution's reach, although they are
computed in the solution's own process:

  - everything here runs, and binds every function it will call, before the solution's first
    line: the codec, marshal, the MAC and `os.write` are held in closures, none of them in a
    module or in `__main__`, so replacing `encode`, `json`, `isinstance` or any module attribute
    changes nothing the answers are made with;
  - an audit hook, installed first (hooks cannot be removed), refuses the ways Python offers to
    reach a running frame or every object: `sys._getframe`, traceback / generator / coroutine
    frames, `sys.settrace` / `setprofile`, `gc.get_objects` / `get_referrers` / `get_referents`,
    more audit hooks, `ctypes`, building code or function objects, and starting programs. The
    answering loop runs in a thread of its own, so even a signal handler (which receives the main
    thread's frame) sees only this bootstrap;
  - its sandbox has no /proc and runs the interpreter from an execute-only copy, which the kernel
    makes non-dumpable (rewards/sandbox.py): no program it starts may ptrace it or read its memory;
  - every answer is sealed with a keyed BLAKE2 MAC over its sequence number and payload; the key
    came on the first line of stdin and lives only in a closure. The host drops any line whose
    seal does not verify, so a solution that writes to the answer channel itself (any fd) forges
    nothing.

So a solution can only make its own answers wrong or missing. What this does not stop is stated
in docs/reliability.md (CPython memory-safety bugs, e.g. crafted bytecode loaded with marshal).
"""

import sys


def _bootstrap():
    import _blake2
    import _thread
    import binascii
    import marshal
    import math
    import os

    read_line = sys.stdin.buffer.readline
    key = binascii.a2b_hex(read_line().strip())
    source = marshal.loads(binascii.a2b_base64(read_line()))
    channel = os.dup(1)  # the answers; the solution's own prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    seal = _blake2.blake2b
    dumps, loads, b64, unb64 = marshal.dumps, marshal.loads, binascii.b2a_base64, binascii.a2b_base64
    write, allocate_lock = os.write, _thread.allocate_lock
    _len, _str, _type, _callable, _getattr, _iter, _next, _repr, _bool = (
        len, str, type, callable, getattr, iter, next, repr, bool)
    _BaseException, _StopIteration, _id = BaseException, StopIteration, id
    _int, _memoryview, _ValueError, _ImportError = int, memoryview, ValueError, ImportError
    denied_events, denied_attributes, denied_imports = DENIED_EVENTS, DENIED_ATTRIBUTES, DENIED_IMPORTS

    def audit(event, args):
        if event in denied_events or event.startswith("ctypes."):
            raise _ValueError("refused by the code judge: " + event)
        if event == "object.__getattr__" and _len(args) == 2 and args[1] in denied_attributes:
            raise _ValueError("refused by the code judge: " + args[1])
        if event == "import" and args and _type(args[0]) is _str and args[0].split(".")[0] in denied_imports:
            raise _ImportError("refused by the code judge: " + args[0])

    sys.addaudithook(audit)
    objects, numbers, pending = [], {}, {}

    def ref(value):
        number = numbers.get(_id(value))
        if number is None:
            number = numbers[_id(value)] = _len(objects)
            objects.append(value)  # kept alive, so its id stays its own
        return number

    encode, decode = make_codec(ref, objects.__getitem__, math.nan)  # noqa: F821 (judge_codec.py's text)

    def reply(seq, question, message):
        """One sealed line: the seal covers the sequence number, the question as it came and the answer."""
        try:
            payload = b64(dumps(message, 4), newline=False)
        except _BaseException:
            payload = b64(dumps(("failed", "the answer could not be written"), 4), newline=False)
        head = b"%d " % seq
        mac = seal(head + question + b" " + payload, key=key, digest_size=16).hexdigest().encode()
        view = _memoryview(head + mac + b" " + payload + b"\n")
        while view:
            view = view[write(channel, view):]

    def answer(ask, namespace):
        target = namespace[ask[1]] if ask[0] == "name" else objects[ask[1]]
        op, args = ask[2], [decode(a) for a in ask[3]]
        if op == "call":
            return sent(target(*args, **{k: decode(v) for k, v in ask[4]}))
        if op == "getattr":
            return sent(_getattr(target, ask[4]))
        if op == "eq":
            return sent(_bool(target == args[0]))
        if op == "next":  # draw up to ask[4] items, lazily, on the test's demand
            items = []
            if pending.get(ask[1]) is not None:
                error = pending.pop(ask[1])
                raise error
            while _len(items) < ask[4]:
                try:
                    item = _next(target)
                except _StopIteration:
                    return ("items", items, True)
                except _BaseException as exc:
                    if not items:
                        raise
                    pending[ask[1]] = exc
                    break
                try:
                    items.append(encode(item))
                except _BaseException as exc:
                    return ("failed", "an item could not be sent: %s" % _str(exc)[:200])
            return ("items", items, False)
        method = {"len": _len, "str": _str, "repr": _repr, "bool": _bool, "iter": _iter,
                  "getitem": lambda x, i: x[i], "contains": lambda x, i: i in x}[op]
        return sent(method(target, *args))

    def sent(result):
        """A result as it crosses: a value past the codec's bounds fails its test with the reason,
        it is never an exception the test could catch."""
        try:
            return ("ok", encode(result))
        except _BaseException as exc:
            return ("failed", "the answer could not be sent: %s" % _str(exc)[:200])

    def serve(done):
        namespace = {"__name__": "__solution__"}
        try:
            exec(compile(source, "<solution>", "exec"), namespace)  # sandbox-ok
            names = {}
            for name, value in list(namespace.items()):
                if _type(name) is _str and not name.startswith("__"):
                    try:
                        names[name] = ("callable",) if _callable(value) else encode(value)
                    except _BaseException:
                        pass
            reply(0, b"", ("hello", names))
        except _BaseException as exc:
            reply(0, b"", ("failed", "the solution raised %s while loading" % _type(exc).__name__))
        while True:
            line = read_line()
            if not line:
                break
            try:
                seq, _, body = line.rstrip(b"\n").partition(b" ")
                seq = _int(seq)
                ask = loads(unb64(body))
            except _BaseException:
                continue
            try:
                message = answer(ask, namespace)
            except _BaseException as exc:
                try:
                    message = ("raised", _type(exc).__name__, _str(exc)[:200])
                except _BaseException:
                    message = ("raised", "Exception", "")
            reply(seq, body, message)
        done.release()

    done = allocate_lock()
    done.acquire()
    _thread.start_new_thread(serve, (done,))
    return done  # waited on at module level: a signal handler's frame there holds none of the above


DENIED_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "sys.addaudithook", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__",
    "function.__new__", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.fork", "os.forkpty",
    "subprocess.Popen", "pty.spawn"})
DENIED_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
DENIED_IMPORTS = frozenset({"ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_xxsubinterpreters"})

_done = _bootstrap()
del _bootstrap, DENIED_EVENTS, DENIED_ATTRIBUTES, DENIED_IMPORTS
_done.acquire()
