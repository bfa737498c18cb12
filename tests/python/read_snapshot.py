"""Read a secretlog snapshot with pyarrow (a third-party Arrow implementation) and check it
against its manifest: every file's rows and columns. Usage: read_snapshot.py SNAPSHOT_DIR"""
import hashlib
import json
import os
import sys

import pyarrow.ipc as ipc

COLUMNS = {
    "secrets.arrow": ["mount", "path", "metadata"],
    "values.arrow": ["mount", "path", "version", "key_term", "sealed"],
    "control.arrow": ["key", "value"],
}

d = sys.argv[1]
manifest = json.load(open(os.path.join(d, "manifest.json")))
assert manifest["format_version"] == 1, manifest
for f in manifest["files"]:
    raw = open(os.path.join(d, f["name"]), "rb").read()
    assert hashlib.sha256(raw).hexdigest() == f["sha256"], f["name"]
    table = ipc.open_file(os.path.join(d, f["name"])).read_all()
    assert table.num_rows == f["rows"], (f["name"], table.num_rows, f["rows"])
    assert table.column_names == COLUMNS[f["name"]], (f["name"], table.column_names)
rows = {f["name"]: f["rows"] for f in manifest["files"]}
assert rows["secrets.arrow"] == manifest["secrets"] and rows["values.arrow"] == manifest["values"], manifest
print("pyarrow: snapshot", manifest["id"], "matches its manifest:", rows)
