"""Creates, execs and deletes from several clients at once: the cell's
parent's half runs on helper threads beside suspended cloning threads, and
races there show up only under concurrency."""

import threading

from moatd_harness import moat


def test_concurrent_create_exec_delete(moatd):
    errors = []

    def client(n):
        try:
            for i in range(10):
                sb = moat.Sandbox.create(socket=moatd.socket, tags={"client": str(n)})
                try:
                    r = sb.run(["sh", "-c", "echo $0", "%d-%d" % (n, i)])
                    assert r.stdout == "%d-%d\n" % (n, i) and r.exit_code == 0, r
                finally:
                    sb.terminate()
        except Exception as exc:  # reported below, with the daemon's log
            errors.append("client %d: %r" % (n, exc))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, "\n".join(errors)
    assert moat.Sandbox.list(socket=moatd.socket) == []
