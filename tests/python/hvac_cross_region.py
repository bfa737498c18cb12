"""A write in one region is read in the other, through a stock Vault client (hvac).

Writes `{"written_by": "hvac"}` to the KV v2 secret PATH on WRITE_URL (a reader: it forwards the
write to the leading writer), then reads PATH on READ_URL (a reader in another region) until the
written version is there or TIMEOUT seconds have passed. Prints one JSON line (version, how long
the other region took) and exits non-zero if the version never showed.

Usage: python3 hvac_cross_region.py WRITE_URL READ_URL PATH [TIMEOUT]   (token in VAULT_TOKEN)
"""
import json
import os
import sys
import time

import hvac


def main():
    write_url, read_url, path = sys.argv[1:4]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    token = os.environ["VAULT_TOKEN"]
    writer = hvac.Client(url=write_url, token=token)
    reader = hvac.Client(url=read_url, token=token)
    secret = {"written_by": "hvac", "path": path}
    version = writer.secrets.kv.v2.create_or_update_secret(path=path, secret=secret)["data"]["version"]
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        try:
            got = reader.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)
            if got["data"]["metadata"]["version"] >= version and got["data"]["data"] == secret:
                waited = round((time.monotonic() - start) * 1000)
                print(json.dumps({"version": version, "read_after_ms": waited}))
                return 0
            last = got["data"]
        except hvac.exceptions.InvalidPath as e:
            last = f"not found yet: {e}"
        time.sleep(0.1)
    print(json.dumps({"version": version, "error": "never read in the other region", "last": str(last)}))
    return 1


if __name__ == "__main__":
    sys.exit(main())
