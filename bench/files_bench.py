#!/usr/bin/python3
"""Files benchmarks against a running moatd (bench/run.sh starts one), with
the Python SDK as a client would use it:

  upload / download   a 256 MiB file into and out of a sandbox, MB/s
  small files         1,000 files of 1 KiB up and down as one tar
  list                a 10,000-entry directory

Prints a table; --json writes the numbers for bench/report.py."""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk", "python"))
import moat  # noqa: E402

MIB = 1024 * 1024


def timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="moat-files-bench-")
    results = {}
    sb = moat.Sandbox.create(memory=2048, disk=2048, socket=args.socket)
    try:
        big = os.path.join(work, "big")
        with open(big, "wb") as f:
            for _ in range(256):
                f.write(os.urandom(MIB))
        up, down = [], []
        for _ in range(args.repeats):
            with open(big, "rb") as f:
                up.append(256 / timed(lambda: sb.files.write("/root/big", f)))
            down.append(256 / timed(lambda: sb.files.download("/root/big", os.path.join(work, "back"))))
            sb.files.remove("/root/big")
        results["upload_mb_per_s"] = statistics.median(up) * MIB / 1e6
        results["download_mb_per_s"] = statistics.median(down) * MIB / 1e6

        small = os.path.join(work, "small")
        os.makedirs(small)
        for i in range(1000):
            with open(os.path.join(small, "f%04d" % i), "wb") as f:
                f.write(os.urandom(1024))
        results["small_upload_s"] = timed(lambda: sb.files.upload_dir(small, "/root/small"))
        results["small_download_s"] = timed(lambda: sb.files.download_dir("/root/small", os.path.join(work, "s2")))

        sb.run("mkdir -p /root/many && cd /root/many && seq 1 10000 | xargs touch")
        listed = []
        results["list_10000_s"] = timed(lambda: listed.append(sb.files.list("/root/many")))
        assert len(listed[0]) == 10000, len(listed[0])
    finally:
        sb.terminate()
        shutil.rmtree(work, ignore_errors=True)
    print("files bench")
    print("  256 MiB upload        %8.0f MB/s" % results["upload_mb_per_s"])
    print("  256 MiB download      %8.0f MB/s" % results["download_mb_per_s"])
    print("  1,000 files up (tar)  %8.3f s" % results["small_upload_s"])
    print("  1,000 files down      %8.3f s" % results["small_download_s"])
    print("  list 10,000 entries   %8.3f s" % results["list_10000_s"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
