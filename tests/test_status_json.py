"""`lulayer status --json` against what the tools written for rpm-ostree parse.

The keys and types below are taken from the readers and the writer of `rpm-ostree status --json`
(git mirrors fetched 2026-12; paths in those repositories):

* CLIENT: coreos/rpm-ostree rust/rpmostree-client/src/lib.rs, ``struct Deployment``
  (serde, kebab-case): ``osname: String``, ``pinned: bool``, ``checksum: String``,
  ``base_commit_meta: HashMap<String, Value>``, ``booted: bool``, ``serial: u32`` are required;
  ``unlocked``, ``base_checksum``, ``staged``, ``origin``, ``container_image_reference``,
  ``version`` are ``Option``.
* ZINCATI: coreos/zincati src/rpm_ostree/cli_status.rs, ``struct Deployment``: ``booted: bool``,
  ``checksum: String``, ``base_commit_meta`` (``ostree.manifest``, ``ostree.container.image-config``:
  ``Option<String>``) and ``version: String`` required; ``staged: bool`` defaults to false;
  ``base_checksum``, ``container_image_reference(_digest)`` are ``Option<String>``.
* DAEMON: coreos/rpm-ostree rust/src/daemon.rs, ``deployment_populate_variant`` and
  ``deployment_populate_variant_origin``: id, osname, checksum, serial, booted, staged, pinned,
  unlocked and the origin's request lists always; ``live-inprogress`` / ``live-replaced`` only when
  set (from rust/src/live.rs ``get_live_state``); ``variant_add_remote_status``: gpg-enabled or
  remote-error.
* UTILS: coreos/rpm-ostree src/daemon/rpmostreed-deployment-utils.cxx,
  ``rpmostreed_deployment_generate_variant``: base-commit-meta always; base-checksum, base-version,
  base-timestamp, layered-commit-meta when layered; version and timestamp when the commit has them;
  origin or container-image-reference(-digest); pending-base-*; packages and base-removals,
  base-local-replacements, base-remote-replacements always.
* STATUS: coreos/rpm-ostree src/app/rpmostree-builtin-status.cxx: the top level (deployments,
  transaction, cached-update, update-driver), ``--booted``, ``--pending-exit-77``; it reads
  ``requested-packages`` minus ``packages`` as InactiveRequests.
* ANSIBLE: ansible-collections/community.general plugins/modules/rpm_ostree_pkg.py reads no JSON (it
  reads exit codes 0/77); containers/bootc (lib/src/status.rs) reads libostree itself, not this JSON.

rpm-ostree serializes a GVariant dict with json-glib: an unset key is absent, never null.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from lulayer.faults import FAULT_ENV
from tests.helpers import booted, commit_of, lulayer, pending

CLIENT = "rpm-ostree rust/rpmostree-client/src/lib.rs Deployment"
ZINCATI = "zincati src/rpm_ostree/cli_status.rs Deployment"
DAEMON = "rpm-ostree rust/src/daemon.rs deployment_populate_variant"
UTILS = "rpm-ostree src/daemon/rpmostreed-deployment-utils.cxx rpmostreed_deployment_generate_variant"
STATUS = "rpm-ostree src/app/rpmostree-builtin-status.cxx"


@dataclass(frozen=True)
class Key:
    kind: type | tuple[type, ...]
    always: bool  # the daemon always writes it, or a reader fails without it
    sources: tuple[str, ...]


SCHEMA: dict[str, Key] = {
    "id": Key(str, True, (DAEMON, STATUS)),
    "osname": Key(str, True, (CLIENT, DAEMON, STATUS)),
    "serial": Key(int, True, (CLIENT, DAEMON, STATUS)),
    "checksum": Key(str, True, (CLIENT, ZINCATI, DAEMON)),
    "booted": Key(bool, True, (CLIENT, ZINCATI, DAEMON)),
    "staged": Key(bool, True, (CLIENT, ZINCATI, DAEMON)),
    "pinned": Key(bool, True, (CLIENT, DAEMON)),
    "unlocked": Key(str, True, (CLIENT, DAEMON)),
    "base-commit-meta": Key(dict, True, (CLIENT, ZINCATI, UTILS)),
    "requested-packages": Key(list, True, (DAEMON, STATUS)),
    "requested-local-packages": Key(list, True, (DAEMON,)),
    "requested-local-fileoverride-packages": Key(list, True, (DAEMON,)),
    "requested-base-removals": Key(list, True, (DAEMON,)),
    "requested-base-local-replacements": Key(list, True, (DAEMON,)),
    "requested-base-remote-replacements": Key(list, False, (DAEMON,)),  # a(sas), only when the origin has one
    "regenerate-initramfs": Key(bool, True, (DAEMON,)),
    "packages": Key(list, True, (UTILS, STATUS)),
    "base-removals": Key(list, True, (UTILS,)),
    "base-local-replacements": Key(list, True, (UTILS,)),
    "base-remote-replacements": Key(dict, True, (UTILS,)),
    "version": Key(str, False, (CLIENT, ZINCATI, UTILS)),
    "timestamp": Key(int, False, (UTILS,)),
    "origin": Key(str, False, (CLIENT, UTILS)),
    "container-image-reference": Key(str, False, (CLIENT, ZINCATI, UTILS)),
    "container-image-reference-digest": Key(str, False, (ZINCATI, UTILS)),
    "base-checksum": Key(str, False, (CLIENT, ZINCATI, UTILS)),
    "base-version": Key(str, False, (UTILS,)),
    "base-timestamp": Key(int, False, (UTILS,)),
    "layered-commit-meta": Key(dict, False, (UTILS,)),
    "endoflife": Key(str, False, (UTILS,)),
    "pending-base-checksum": Key(str, False, (UTILS,)),
    "pending-base-version": Key(str, False, (UTILS,)),
    "pending-base-timestamp": Key(int, False, (UTILS,)),
    "gpg-enabled": Key(bool, False, (DAEMON,)),
    "remote-error": Key(str, False, (DAEMON,)),
    "signatures": Key(list, False, (DAEMON,)),
    "custom-origin": Key(list, False, (UTILS,)),
    "finalization-locked": Key(bool, False, (DAEMON,)),
    "live-inprogress": Key(str, False, (DAEMON, "rpm-ostree rust/src/live.rs")),
    "live-replaced": Key(str, False, (DAEMON, "rpm-ostree rust/src/live.rs")),
}
# Zincati's BaseCommitMeta: both Option<String>.
BASE_COMMIT_META = {"ostree.manifest": str, "ostree.container.image-config": str}
# A key the client crate or Zincati cannot do without.
REQUIRED_BY_READERS = {"osname", "pinned", "checksum", "base-commit-meta", "booted", "serial"} | {"version"}


def check_deployment(d: dict[str, object]) -> None:
    """Assert d is a deployment as rpm-ostree writes it and its readers parse it."""
    for key, value in d.items():
        assert value is not None, f"{key!r} is null; rpm-ostree leaves an unset key out: {d}"
        if key.startswith("lulayer-"):
            continue
        assert key in SCHEMA, f"{key!r} is neither rpm-ostree's nor lulayer-prefixed: {d}"
        spec = SCHEMA[key]
        assert isinstance(value, spec.kind), f"{key!r} is {type(value).__name__}, {spec.sources} want {spec.kind}"
        if spec.kind is int:
            assert not isinstance(value, bool) and value >= 0, (key, value)  # serial is a u32
    for key, spec in SCHEMA.items():
        if spec.always:
            assert key in d, f"{key!r} missing; {spec.sources} always have it: {d}"
    for key in ("requested-packages", "packages", "requested-local-packages", "requested-base-removals"):
        assert all(isinstance(x, str) for x in d[key]), (key, d[key])  # type: ignore[attr-defined]
    meta = d["base-commit-meta"]
    assert isinstance(meta, dict)
    for key, kind in BASE_COMMIT_META.items():
        assert key not in meta or isinstance(meta[key], kind), (key, meta)
    # rpm-ostree names the base only of a layered commit; both origin kinds never at once.
    assert ("base-checksum" in d) == ("layered-commit-meta" in d), d
    assert not ("origin" in d and "container-image-reference" in d), d
    assert d["id"] == f"{d['osname']}-{d['checksum']}.{d['serial']}"


def check_status(doc: dict[str, object]) -> list[dict[str, object]]:
    """Assert the whole `status --json` document; return its deployments."""
    assert set(doc) == {"deployments", "transaction", "cached-update", "update-driver"}, doc.keys()
    txn = doc["transaction"]
    assert txn is None or (isinstance(txn, list) and len(txn) == 3 and all(isinstance(x, str) for x in txn))
    deps = doc["deployments"]
    assert isinstance(deps, list) and deps
    for d in deps:
        check_deployment(d)
    assert sum(1 for d in deps if d["booted"]) <= 1
    assert [d for d in deps if d["staged"]] in ([], [deps[0]]), "a staged deployment is deployments[0]"
    return deps


def status_doc(sysroot: Path, *args: str) -> dict[str, object]:
    doc = json.loads(lulayer(sysroot, "status", "--json", *args).stdout)
    assert isinstance(doc, dict)
    return doc


def pending_exit(sysroot: Path) -> int:
    return lulayer(sysroot, "status", "--pending-exit-77", check=False).returncode


# --------------------------------------------------------------------------- no sysroot


def test_schema_lists_what_the_readers_require() -> None:
    for key in REQUIRED_BY_READERS - {"version"}:
        assert SCHEMA[key].always, key
    assert not SCHEMA["version"].always  # rpm-ostree leaves it out when unset; Zincati then fails


def test_commit_metadata_is_json_as_json_glib_makes_it() -> None:
    from gi.repository import GLib

    from lulayer.layering.status import variant_json

    meta = GLib.Variant("a{sv}", {
        "version": GLib.Variant("s", "41.1"),
        "rpmostree.clientlayer": GLib.Variant("b", True),
        "n": GLib.Variant("t", 2**40),
        "bytes": GLib.Variant("ay", b"\x01\x02"),
        "repos": GLib.Variant("aa{sv}", [{"id": GLib.Variant("s", "fedora"), "timestamp": GLib.Variant("t", 5)}]),
        "pair": GLib.Variant("(si)", ("x", -1)),
        "nothing": GLib.Variant("mv", None),
    })
    assert variant_json(meta) == {
        "version": "41.1", "rpmostree.clientlayer": True, "n": 2**40, "bytes": [1, 2],
        "repos": [{"id": "fedora", "timestamp": 5}], "pair": ["x", -1], "nothing": None,
    }


# --------------------------------------------------------------------------- fixture sysroots

@pytest.mark.root
def test_base_deployment_alone(sysroot: Path) -> None:
    (d,) = check_status(status_doc(sysroot))
    assert d["booted"] is True and d["staged"] is False and d["pinned"] is False and d["unlocked"] == "none"
    assert d["checksum"] == commit_of(booted(sysroot)) and d["serial"] == 0
    assert d["origin"] == fixture_build.REF and d["version"] == fixture_build.OS_VERSION
    assert d["base-commit-meta"] == {"version": fixture_build.OS_VERSION, "ostree.ref-binding": [fixture_build.REF]}
    assert "base-checksum" not in d and d["packages"] == [] and d["requested-packages"] == []
    assert "live-inprogress" not in d and "live-replaced" not in d
    assert pending_exit(sysroot) == 0


@pytest.mark.root
def test_pending_layered_deployment_comes_first(sysroot: Path) -> None:
    base = commit_of(booted(sysroot))
    lulayer(sysroot, "install", "htop")
    first, second = check_status(status_doc(sysroot))
    assert first["booted"] is False and first["staged"] is False and first["lulayer-pending"] is True
    assert first["checksum"] == commit_of(pending(sysroot))
    assert first["base-checksum"] == base and first["base-version"] == fixture_build.OS_VERSION
    assert first["version"] == fixture_build.OS_VERSION  # a layered commit keeps its base's version
    assert first["requested-packages"] == ["htop"] and first["packages"] == ["htop"]
    assert first["lulayer-layered-nevras"] == ["htop-3.3.0-1.fc41.x86_64", "ncurses-libs-6.4-1.fc41.x86_64"]
    assert first["base-commit-meta"] == second["base-commit-meta"]
    assert "rpmostree.clientlayer" in first["layered-commit-meta"]  # type: ignore[operator]
    assert second["booted"] is True and second["checksum"] == base
    assert pending_exit(sysroot) == 77
    (only,) = check_status(status_doc(sysroot, "--booted"))
    assert only["checksum"] == base


@pytest.mark.root
def test_staged_deployment_from_install_live_is_deployments_0(sysroot: Path) -> None:
    # The detached writer is killed before it writes: the deployment stays staged.
    lulayer(sysroot, "install", "htop", "--live", env={FAULT_ENV: "staged-write"})
    staged, live = check_status(status_doc(sysroot))
    assert staged["staged"] is True and staged["booted"] is False
    assert staged["requested-packages"] == ["htop"] and staged["packages"] == ["htop"]
    assert staged["base-checksum"] == live["checksum"] == commit_of(booted(sysroot))
    assert staged["lulayer-being-written"] is False and "lulayer-write-error" not in staged
    # The booted deployment runs the staged commit live (rpm-ostree's LIVE_REF).
    assert live["booted"] is True and live["live-replaced"] == staged["checksum"]
    assert "live-inprogress" not in live
    assert live["unlocked"] == "transient"  # as after rpm-ostree's apply-live (ostree's transient unlock)
    assert pending_exit(sysroot) == 77

    lulayer(sysroot, "finalize")
    written, _ = check_status(status_doc(sysroot))
    assert written["staged"] is False and written["checksum"] == staged["checksum"]
    assert written["id"] == staged["id"], "the staged deployment's id is the one it is written with"


@pytest.mark.root
def test_rollback_deployment_after_a_reboot(sysroot: Path) -> None:
    base = commit_of(booted(sysroot))
    lulayer(sysroot, "install", "htop")
    fixture_build.reboot(sysroot)
    booted_one, rollback = check_status(status_doc(sysroot))
    assert booted_one["booted"] is True and booted_one["packages"] == ["htop"]
    assert rollback["booted"] is False and rollback["lulayer-rollback"] is True and rollback["checksum"] == base
    assert pending_exit(sysroot) == 0  # the booted one boots next

    lulayer(sysroot, "rollback")
    first, _ = check_status(status_doc(sysroot))
    assert first["checksum"] == base and pending_exit(sysroot) == 77


@pytest.mark.root
def test_interrupted_live_update_is_live_inprogress(sysroot: Path) -> None:
    proc = lulayer(sysroot, "install", "htop", "--live", env={FAULT_ENV: "files-half"}, check=False)
    assert proc.returncode == -9, proc
    deps = check_status(status_doc(sysroot))
    (live,) = [d for d in deps if d["booted"]]
    assert live["live-inprogress"] == deps[0]["checksum"]
    assert "live-replaced" not in live  # the live /usr still is the booted commit's


@pytest.mark.root
def test_inactive_request_is_requested_but_not_a_package(sysroot: Path) -> None:
    lulayer(sysroot, "install", "--allow-inactive", "busybox", "htop")
    first, _ = check_status(status_doc(sysroot))
    assert first["requested-packages"] == ["busybox", "htop"]
    assert first["packages"] == ["htop"]  # rpm-ostree: requested-packages minus packages = inactive
    assert "InactiveRequests: busybox" in lulayer(sysroot, "status").stdout


@pytest.mark.root
def test_zincati_and_the_client_crate_find_what_they_read(sysroot: Path) -> None:
    """The reads those readers make, written out: booted deployment, base revision, version,
    base-commit-meta, staged with its default."""
    lulayer(sysroot, "install", "htop", "--live", env={FAULT_ENV: "staged-write"})
    deps = check_status(status_doc(sysroot))
    (b,) = [d for d in deps if d["booted"]]  # Zincati booted_status(), the client's find_booted()
    base_revision = b.get("container-image-reference") or b.get("base-checksum") or b["checksum"]
    assert base_revision == commit_of(booted(sysroot))
    assert isinstance(b["version"], str) and b["version"]
    assert deps[0].get("staged", False) is True
    assert all(isinstance(d["base-commit-meta"], dict) for d in deps)
