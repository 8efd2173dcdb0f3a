#!/usr/bin/python3
"""Turn the config.json that `crun spec` / `runc spec` wrote into the benchmark's
bundle: run `true` in the shared rootfs, read-only, no terminal, as root (not
rootless), with the runtime's default namespaces and a network namespace.

    oci_bundle.py BUNDLE_DIR ROOTFS
"""
import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: oci_bundle.py BUNDLE_DIR ROOTFS", file=sys.stderr)
        return 2
    bundle, rootfs = sys.argv[1], os.path.abspath(sys.argv[2])
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)

    process = config["process"]
    process["args"] = ["true"]
    process["terminal"] = False
    process.pop("consoleSize", None)
    process["user"] = {"uid": 0, "gid": 0}
    # Every runtime boots the same files: the cached rootfs, never a copy.
    config["root"] = {"path": rootfs, "readonly": True}

    linux = config.setdefault("linux", {})
    # Not rootless: no user namespace, no uid/gid mappings.
    namespaces = [ns for ns in linux.get("namespaces", []) if ns["type"] != "user"]
    linux.pop("uidMappings", None)
    linux.pop("gidMappings", None)
    if not any(ns["type"] == "network" for ns in namespaces):
        namespaces.append({"type": "network"})
    linux["namespaces"] = namespaces

    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    print(" ".join(ns["type"] for ns in namespaces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
