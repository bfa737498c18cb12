"""Read-after-write through a stock Vault client (hvac), no secretlog header: every answer read
right after one's own acknowledged write must show that write. Counts stale answers by kind and
prints them as one JSON line; exits non-zero if any was stale.

A write answered with another version than the one after the previous write counts as stale
too ("write": it was decided on a state that lacked the client's previous write), and so does a
read that fails with any other error ("error").

Each round writes a new version of one secret and reads it back at once from the same URL; every
tenth round also soft-deletes the newest version (metadata must show its deletion_time), destroys
the one before (its metadata must say destroyed), lists the folder (the secret must be there),
and every fiftieth deletes the whole secret's metadata (a read must then be a 404) and starts
again at version 1.

With --read-url the reads go to another node than the writes (say, writes to the leader and
reads on a reader in another region); with --strong every read asks for a linearizable answer
(`X-Secretlog-Consistency: strong`, the one secretlog header a client needs for that).

With --retry-writes SECONDS a write that fails (a 5xx, no answer: while no writer leads) is
retried, as a client riding out a leader failover would, for up to that long; the version check
of the next write is then skipped (a failed write may still have landed), and every read is
checked as before. The JSON line then also gives the writes retried and the last version the
client was told it wrote ("last").

Usage: python3 hvac_read_after_write.py URL ROUNDS [--read-url URL] [--strong] [--retry-writes S]
(token in VAULT_TOKEN)
"""
import argparse
import json
import os
import sys
import time

import hvac
import requests


def retrying(seconds, counter, call):
    """`call()`, retried on a server error or no answer for up to `seconds` (0: not retried)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except (hvac.exceptions.InternalServerError, hvac.exceptions.VaultDown,
                hvac.exceptions.BadGateway, requests.exceptions.ConnectionError,
                requests.exceptions.Timeout):
            if time.monotonic() >= deadline:
                raise
            counter["retried"] += 1
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("rounds", type=int)
    ap.add_argument("--read-url")
    ap.add_argument("--strong", action="store_true")
    ap.add_argument("--retry-writes", type=float, default=0)
    args = ap.parse_args()
    url, rounds = args.url, args.rounds
    client = hvac.Client(url=url, token=os.environ["VAULT_TOKEN"])
    session = requests.Session()
    if args.strong:
        session.headers["X-Secretlog-Consistency"] = "strong"
    reader = hvac.Client(url=args.read_url or url, token=os.environ["VAULT_TOKEN"], session=session)
    kv = client.secrets.kv.v2
    rkv = reader.secrets.kv.v2
    stale = {"write": 0, "version": 0, "delete": 0, "destroy": 0, "list": 0, "metadata_delete": 0, "error": 0}
    first = {}
    checks = 0
    writes = {"retried": 0}

    def write(call):
        return retrying(args.retry_writes, writes, call)

    def saw(kind, detail):
        stale[kind] += 1
        first.setdefault(kind, detail)

    path = "raw/s0"
    expected = 0
    for i in range(rounds):
        try:
            retried_before = writes["retried"]
            out = write(lambda: kv.create_or_update_secret(path=path, secret={"round": i}))
            version = out["data"]["version"]
            expected += 1
            if writes["retried"] > retried_before:
                # A failed attempt may have landed too: nothing to say about the version.
                expected = version
            if version != expected:
                # Decided on a state that did not hold the previous write yet.
                saw("write", f"round {i}: the write answered version {version}, expected {expected}")
                expected = version
            checks += 1
            try:
                got = rkv.read_secret_version(path=path, raise_on_deleted_version=False)["data"]
                if got["metadata"]["version"] != version or got["data"] != {"round": i}:
                    saw("version", f"round {i}: wrote v{version}, read v{got['metadata']['version']}")
            except hvac.exceptions.InvalidPath:
                saw("version", f"round {i}: wrote v{version}, read 404")
            except hvac.exceptions.VaultError as e:
                saw("error", f"round {i}: wrote v{version}, the read failed: {e}")
            if i % 10 == 9:
                write(lambda: kv.delete_latest_version_of_secret(path=path))
                meta = rkv.read_secret_metadata(path=path)["data"]["versions"].get(str(version), {})
                checks += 1
                if not meta.get("deletion_time"):
                    saw("delete", f"round {i}: v{version} deleted, metadata shows no deletion_time")
                if version > 1:
                    write(lambda: kv.destroy_secret_versions(path=path, versions=[version - 1]))
                    meta = rkv.read_secret_metadata(path=path)["data"]["versions"].get(str(version - 1), {})
                    checks += 1
                    if not meta.get("destroyed"):
                        saw("destroy", f"round {i}: v{version - 1} destroyed, metadata says not")
                try:
                    keys = rkv.list_secrets(path="raw")["data"]["keys"]
                except hvac.exceptions.InvalidPath:
                    keys = []
                name = path.split("/")[1]
                checks += 1
                if name not in keys:
                    saw("list", f"round {i}: {name} written, list shows {keys}")
            if i % 50 == 49:
                write(lambda: kv.delete_metadata_and_all_versions(path=path))
                checks += 1
                try:
                    rkv.read_secret_version(path=path, raise_on_deleted_version=False)
                    saw("metadata_delete", f"round {i}: metadata deleted, the secret still reads")
                except hvac.exceptions.InvalidPath:
                    pass
                except hvac.exceptions.VaultError as e:
                    saw("error", f"round {i}: metadata deleted, the read failed: {e}")
                path = f"raw/s{i + 1}"
                expected = 0
        except hvac.exceptions.VaultError as e:
            # Any other failure in a round (a 404 where the client's own write should be, a 500)
            # counts too, and the run goes on.
            saw("error", f"round {i}: {e}")
    total = sum(stale.values())
    report = {"rounds": rounds, "checks": checks, "stale": stale, "first": first}
    if args.retry_writes:
        report["writes_retried"] = writes["retried"]
        report["last"] = {"path": path, "version": expected}
    print(json.dumps(report))
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
