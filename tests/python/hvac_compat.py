"""A stock Vault client (hvac) against secretlog: writes through one reader (forwarded to the
leader writer), reads back from another reader. Exits non-zero on any difference.

Usage: python3 hvac_compat.py WRITE_URL READ_URL   (token in VAULT_TOKEN)
"""
import json
import os
import sys
import tempfile
import time

import hvac


def eventually(fn, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
            if value is not None:
                return value
        except hvac.exceptions.InvalidPath:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def main():
    write_url, read_url = sys.argv[1], sys.argv[2]
    token = os.environ["VAULT_TOKEN"]
    w = hvac.Client(url=write_url, token=token)
    r = hvac.Client(url=read_url, token=token)
    assert w.is_authenticated(), "token not accepted"

    kv_w, kv_r = w.secrets.kv.v2, r.secrets.kv.v2
    out = kv_w.create_or_update_secret(path="hvac/app", secret={"user": "svc", "password": "s3cret"})
    assert out["data"]["version"] == 1, out
    kv_w.create_or_update_secret(path="hvac/app", secret={"user": "svc", "password": "rotated"}, cas=1)
    try:
        kv_w.create_or_update_secret(path="hvac/app", secret={"x": 1}, cas=1)
        raise AssertionError("stale CAS accepted")
    except hvac.exceptions.InvalidRequest:
        pass

    def read_v2():
        got = kv_r.read_secret_version(path="hvac/app", raise_on_deleted_version=True)
        return got if got["data"]["metadata"]["version"] == 2 else None

    got = eventually(read_v2, "version 2 on the other reader")
    assert got["data"]["data"] == {"user": "svc", "password": "rotated"}, got
    v1 = kv_r.read_secret_version(path="hvac/app", version=1, raise_on_deleted_version=True)
    assert v1["data"]["data"]["password"] == "s3cret", v1

    kv_w.patch(path="hvac/app", secret={"extra": "yes"})
    got = eventually(lambda: (lambda g: g if g["data"]["metadata"]["version"] == 3 else None)(
        kv_r.read_secret_version(path="hvac/app", raise_on_deleted_version=True)), "patched version")
    assert got["data"]["data"] == {"user": "svc", "password": "rotated", "extra": "yes"}, got

    listed = eventually(lambda: kv_r.list_secrets(path="hvac"), "list")
    assert listed["data"]["keys"] == ["app"], listed

    kv_w.update_metadata(path="hvac/app", max_versions=5, custom_metadata={"team": "payments"})
    meta = eventually(lambda: (lambda m: m if m["data"]["max_versions"] == 5 else None)(
        kv_r.read_secret_metadata(path="hvac/app")), "metadata")
    assert meta["data"]["current_version"] == 3 and meta["data"]["custom_metadata"] == {"team": "payments"}, meta

    kv_w.delete_latest_version_of_secret(path="hvac/app")
    def deleted():
        try:
            kv_r.read_secret_version(path="hvac/app", raise_on_deleted_version=True)
            return None
        except hvac.exceptions.InvalidPath:
            return True
    eventually(deleted, "soft delete visible")
    kv_w.undelete_secret_versions(path="hvac/app", versions=[3])
    kv_w.destroy_secret_versions(path="hvac/app", versions=[1])
    kv_w.delete_metadata_and_all_versions(path="hvac/app")
    def gone():
        try:
            kv_r.read_secret_metadata(path="hvac/app")
            return None
        except hvac.exceptions.InvalidPath:
            return True
    eventually(gone, "metadata deleted")

    approle_login(w, write_url, read_url)
    legacy_policies(w, r)
    mount_management(w, r)
    audit_devices(w, r)

    bad = hvac.Client(url=read_url, token="s.not-a-token")
    try:
        bad.secrets.kv.v2.read_secret_version(path="hvac/app", raise_on_deleted_version=True)
        raise AssertionError("wrong token accepted")
    except hvac.exceptions.Forbidden:
        pass
    print("hvac: all checks passed")


def approle_login(w, write_url, read_url):
    """AppRole as an app uses it with hvac: the operator enables it and writes a role (through
    a reader); the app logs in with a role id and a secret id (through a reader) and reads with
    the token it got from the other reader."""
    w.sys.enable_auth_method("approle")
    assert "approle/" in w.sys.list_auth_methods()["data"], "approle listed"
    w.sys.create_or_update_acl_policy(name="hvac-app", policy='path "secret/data/hvac/approle" { capabilities = ["read"] }')
    w.secrets.kv.v2.create_or_update_secret(path="hvac/approle", secret={"db": "pw"})
    w.auth.approle.create_or_update_approle(role_name="hvac", token_policies=["hvac-app"], token_ttl="10m",
                                            secret_id_num_uses=1)
    role_id = eventually(lambda: w.auth.approle.read_role_id(role_name="hvac")["data"]["role_id"], "role id")
    secret_id = w.auth.approle.generate_secret_id(role_name="hvac")["data"]["secret_id"]

    app = hvac.Client(url=write_url)
    app.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert app.is_authenticated(), "the AppRole token works (lookup-self through the default policy)"
    reader = hvac.Client(url=read_url, token=app.token)
    got = eventually(lambda: reader.secrets.kv.v2.read_secret_version(path="hvac/approle",
                                                                      raise_on_deleted_version=True),
                     "the AppRole token on the other reader")
    assert got["data"]["data"] == {"db": "pw"}, got
    try:
        hvac.Client(url=write_url).auth.approle.login(role_id=role_id, secret_id=secret_id)
        raise AssertionError("a single-use secret id logged in twice")
    except hvac.exceptions.InvalidRequest:
        pass


def legacy_policies(w, r):
    """hvac's older policy calls (`sys/policy/<name>`, which Vault still serves): write through one
    reader, read and list on the other, a token limited by it, delete."""
    text = 'path "secret/data/hvac/legacy" { capabilities = ["read"] }'
    w.sys.create_or_update_policy(name="Hvac-Legacy", policy=text)
    got = eventually(lambda: r.sys.read_policy("hvac-legacy"), "the policy on the other reader")
    assert (got["data"]["name"], got["data"]["rules"]) == ("hvac-legacy", text), got
    assert got["rules"] == text, "older clients read the rules from the top level"
    listed = r.sys.list_policies()
    assert "hvac-legacy" in listed["data"]["policies"] and listed["policies"] == listed["data"]["keys"], listed
    try:
        w.sys.create_or_update_policy(name="hvac-bad", policy='path "x" { capabilities = ["fly"] }')
        raise AssertionError("an invalid policy accepted")
    except hvac.exceptions.InvalidRequest:
        pass

    w.secrets.kv.v2.create_or_update_secret(path="hvac/legacy", secret={"k": "v"})
    token = w.auth.token.create(policies=["hvac-legacy"], ttl="10m")["auth"]["client_token"]
    limited = hvac.Client(url=r.url, token=token)
    got = eventually(lambda: limited.secrets.kv.v2.read_secret_version(path="hvac/legacy",
                                                                       raise_on_deleted_version=True),
                     "a read allowed by the policy")
    assert got["data"]["data"] == {"k": "v"}, got
    try:
        limited.secrets.kv.v2.create_or_update_secret(path="hvac/legacy", secret={"k": "w"})
        raise AssertionError("a write the policy does not allow accepted")
    except hvac.exceptions.Forbidden:
        pass

    w.sys.delete_policy("hvac-legacy")
    def deleted():
        try:
            r.sys.read_policy("hvac-legacy")
            return None
        except hvac.exceptions.InvalidPath:
            return True
    eventually(deleted, "the policy gone on the other reader")


def mount_management(w, r):
    """A second KV v2 mount as an operator makes one with hvac: enable, configure, use, tune,
    disable — written through one reader, seen on the other once it has applied it."""
    def on_r(fn, ok, what):
        return eventually(lambda: (lambda v: v if ok(v) else None)(fn()), what)

    w.sys.enable_secrets_engine(backend_type="kv", path="hvac-team", options={"version": "2"},
                                description="team secrets")
    mounts = on_r(lambda: r.sys.list_mounted_secrets_engines()["data"], lambda m: "hvac-team/" in m, "the mount")
    assert mounts["hvac-team/"]["type"] == "kv" and mounts["hvac-team/"]["options"]["version"] == "2", mounts
    assert mounts["hvac-team/"]["description"] == "team secrets", mounts
    try:
        w.sys.enable_secrets_engine(backend_type="kv", path="hvac-team", options={"version": "2"})
        raise AssertionError("a second mount at the same path accepted")
    except hvac.exceptions.InvalidRequest:
        pass

    team_w, team_r = w.secrets.kv.v2, r.secrets.kv.v2
    team_w.configure(max_versions=2, mount_point="hvac-team")
    on_r(lambda: team_r.read_configuration(mount_point="hvac-team")["data"], lambda c: c["max_versions"] == 2,
         "the mount's max_versions")
    for i in range(3):
        team_w.create_or_update_secret(path="db", secret={"i": i}, mount_point="hvac-team")
    meta = on_r(lambda: team_r.read_secret_metadata(path="db", mount_point="hvac-team")["data"],
                lambda m: m["current_version"] == 3, "version 3 on the team mount")
    assert sorted(meta["versions"]) == ["2", "3"], meta
    # The same path under secret/ is another secret.
    try:
        team_w.read_secret_version(path="db", raise_on_deleted_version=True)
        raise AssertionError("hvac-team/db visible under secret/")
    except hvac.exceptions.InvalidPath:
        pass

    w.sys.tune_mount_configuration(path="hvac-team", default_lease_ttl="1h", description="tuned")
    on_r(lambda: r.sys.read_mount_configuration(path="hvac-team")["data"],
         lambda t: t["default_lease_ttl"] == 3600 and t["description"] == "tuned", "the tuned mount")

    w.sys.disable_secrets_engine(path="hvac-team")
    on_r(lambda: r.sys.list_mounted_secrets_engines()["data"], lambda m: "hvac-team/" not in m, "the mount gone")
    try:
        team_r.read_secret_version(path="db", mount_point="hvac-team", raise_on_deleted_version=True)
        raise AssertionError("a secret of a disabled mount is still served")
    except (hvac.exceptions.InvalidPath, hvac.exceptions.Forbidden):
        pass


def audit_devices(w, r):
    """An audit device as an operator manages it with hvac: enabled through one reader, followed
    by the other (which records its answers there, HMACed), found by its hash, disabled again."""
    def on_r(fn, ok, what):
        return eventually(lambda: (lambda v: v if ok(v) else None)(fn()), what)

    trail = os.path.join(tempfile.mkdtemp(prefix="hvac-audit-"), "trail.log")
    w.sys.enable_audit_device(device_type="file", path="hvac-trail", description="from hvac",
                              options={"file_path": trail})
    devices = on_r(lambda: r.sys.list_enabled_audit_devices()["data"], lambda d: "hvac-trail/" in d,
                   "the device on the other reader")
    d = devices["hvac-trail/"]
    assert (d["type"], d["description"], d["options"]["file_path"]) == ("file", "from hvac", trail), d
    try:
        w.sys.enable_audit_device(device_type="file", path="hvac-trail", options={"file_path": trail})
        raise AssertionError("a second device at the same path accepted")
    except hvac.exceptions.InvalidRequest:
        pass

    w.secrets.kv.v2.create_or_update_secret(path="hvac/audited", secret={"pin": "4321"})
    read = eventually(lambda: r.secrets.kv.v2.read_secret_version(path="hvac/audited",
                                                                    raise_on_deleted_version=True),
                      "the audited secret on the other reader")
    with open(trail) as f:
        entries = [json.loads(line) for line in f]
    mine = [e for e in entries if e["request"]["id"] == read["request_id"]]
    assert sorted(e["type"] for e in mine) == ["request", "response"], mine
    answer = next(e for e in mine if e["type"] == "response")
    recorded = answer["response"]["body"]["data"]["data"]["pin"]
    assert "4321" not in json.dumps(entries), "a value in plaintext in the trail"
    hashed = r.sys.calculate_hash(path="hvac-trail", input_to_hash="4321")["data"]["hash"]
    assert recorded == hashed, (recorded, hashed)

    w.sys.disable_audit_device(path="hvac-trail")
    on_r(lambda: r.sys.list_enabled_audit_devices()["data"], lambda d: "hvac-trail/" not in d,
         "the device gone on the other reader")


if __name__ == "__main__":
    main()
