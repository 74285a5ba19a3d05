"""Today's Fedora host: a deployment that follows a container image, with either rpmdb layout.

Every command on a fixture sysroot whose booted deployment's .origin is
``[origin] container-image-reference=ostree-unverified-registry:quay.io/example/os:41``, the image
stored as ostree-ext stores a pulled one (fixtures/build.py _write_image), for the rpmdb at
/usr/share/rpm (rpm-ostree's layout) and at /usr/lib/sysimage/rpm (a dnf-built bootc image).

What is matched, and where it is defined:
- the origin: coreos/rpm-ostree rust/src/origin.rs (refspec, baserefspec or
  container-image-reference, never both; [packages] requested);
- the image's ref and merge commit: containers/bootc ostree-ext/src/refescape.rs,
  ostree-ext/src/container/store.rs (ref_for_image, META_MANIFEST_DIGEST), container/mod.rs;
- the base commit of a layered deployment: the layered commit's parent, marked by
  rpmostree.clientlayer (rpm-ostree rust/src/daemon.rs deployment_layeredmeta_from_commit_impl);
- the commit metadata rpm-ostree reads from a client-layer commit: CLIENTLAYER_KEYS below.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gi
import pytest

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from fixtures import build as fb  # noqa: E402
from fixtures.build import OriginForm, RpmdbLayout  # noqa: E402
from lulayer.imageref import ImageReference  # noqa: E402
from tests.helpers import (  # noqa: E402
    BASE,
    WITH_HTOP,
    assert_htop_runs,
    booted,
    chroot,
    commit_of,
    describe,
    lulayer,
    one_error_line,
    origin_of,
    ostree_fsck,
    pending,
    repo_of,
    run,
)

pytestmark = pytest.mark.root

IMAGE_ORIGIN = f"[origin]\ncontainer-image-reference={fb.IMAGE_REFERENCE}\n"

# The keys rpm-ostree reads from a client-layer commit, with the GVariant type its code reads them
# as, and where (coreos/rpm-ostree, HEAD of 2026-06). It writes them all in
# src/libpriv/rpmostree-core.cxx rpmostree_context_commit.
CLIENTLAYER_KEYS: dict[str, tuple[str, str]] = {
    "rpmostree.clientlayer": ("b", "rust/src/daemon.rs deployment_layeredmeta_from_commit_impl: layered or not"),
    "rpmostree.clientlayer_version": ("u", "rust/src/daemon.rs, the same function; 0 when missing, and then "
                                           "src/libpriv/rpmostree-util.cxx asserts an rpmostree.spec"),
    "rpmostree.packages": ("as", "src/libpriv/rpmostree-util.cxx rpmostree_deployment_get_layered_info, "
                                 "asserted from version 1"),
    "rpmostree.removed-base-packages": ("av", "rpmostree-util.cxx, the same function, asserted from version 2"),
    "rpmostree.replaced-base-packages": ("a(vv)", "rpmostree-util.cxx, the same function, asserted from version 2"),
    "rpmostree.replaced-base-remote-packages": ("a{sv}", "rpmostree-util.cxx, the same function, asserted from "
                                                         "version 6"),
    "rpmostree.modules": ("as", "older rpm-ostree bails without it (rpmostree-core.cxx, issue 5048)"),
    "rpmostree.state-sha512": ("s", "src/daemon/rpmostree-sysroot-upgrader.cxx, required on a layered merge "
                                    "deployment by `rpm-ostree upgrade`"),
    "rpmostree.rpmdb.pkglist": ("a(sssss)", "src/lib/rpmostree-package.c get_commit_rpmdb_pkglist (db diff, "
                                            "the upgrader's package diff)"),
    "rpmostree.rpmmd-repos": ("aa{sv}", "src/app/rpmostree-builtin-status.cxx print_commit (status -v)"),
}
CLIENTLAYER_VERSION = 6  # what rpmostree_context_commit writes today


# --------------------------------------------------------------------------- the host under test


@dataclass(frozen=True)
class Host:
    """A fixture sysroot whose deployment follows the image, with the rpmdb where LAYOUT keeps it."""

    sysroot: Path
    layout: RpmdbLayout

    def rpm(self, root: Path, *args: str) -> str:
        proc = run(["rpm", "--root", str(root), "--dbpath", self.layout.dbpath, *args])
        assert proc.returncode == 0, describe(proc)
        return proc.stdout

    def rpm_names(self, root: Path) -> set[str]:
        return set(self.rpm(root, "-qa", "--qf", "%{NAME}\n").split())

    def run(self, *args: str, check: bool = True) -> str:
        proc = lulayer(self.sysroot, *args, check=check)
        return proc.stdout


@pytest.fixture(params=list(RpmdbLayout), ids=str)
def host(request: pytest.FixtureRequest, make_sysroot: Callable[..., Path]) -> Host:
    layout: RpmdbLayout = request.param
    return Host(make_sysroot(rpmdb=layout, origin=OriginForm.CONTAINER), layout)


@pytest.fixture
def image_sysroot(make_sysroot: Callable[..., Path]) -> Path:
    """A container-image sysroot with rpm-ostree's rpmdb layout (for what the layout cannot change)."""
    return make_sysroot(origin=OriginForm.CONTAINER)


def open_repo(sysroot: Path) -> OSTree.Repo:
    repo = OSTree.Repo.new(Gio.File.new_for_path(str(repo_of(sysroot))))
    repo.open(None)
    return repo


def commit_variant(sysroot: Path, commit: str) -> GLib.Variant:
    _, variant = open_repo(sysroot).load_variant(OSTree.ObjectType.COMMIT, commit)
    return variant


def metadata(sysroot: Path, commit: str) -> GLib.Variant:
    meta: GLib.Variant = commit_variant(sysroot, commit).get_child_value(0)
    return meta


def parent_of(sysroot: Path, commit: str) -> str | None:
    parent: str | None = OSTree.commit_get_parent(commit_variant(sysroot, commit))
    return parent


def image_commit(sysroot: Path) -> str:
    """The merge commit the image's ref points at (what rpm-ostree and bootc deploy)."""
    return run(["ostree", f"--repo={repo_of(sysroot)}", "rev-parse", fb.IMAGE_REF], check=True).stdout.strip()


def digest_of(sysroot: Path, commit: str) -> str:
    value: str = metadata(sysroot, commit).lookup_value("ostree.manifest-digest", GLib.VariantType("s")).unpack()
    return value


def refs(sysroot: Path) -> set[str]:
    return set(run(["ostree", f"--repo={repo_of(sysroot)}", "refs"], check=True).stdout.split())


def snapshot(sysroot: Path) -> tuple[tuple[tuple[str, bytes], ...], set[str], int]:
    """What a refused command must leave as it was: deployment folders and .origin files, refs, objects."""
    deploy = sysroot / "ostree/deploy" / fb.OSNAME / "deploy"
    listing = tuple(sorted((p.name, p.read_bytes() if p.is_file() else b"") for p in deploy.iterdir()))
    objects = sum(len(files) for _d, _s, files in os.walk(repo_of(sysroot) / "objects"))
    return listing, refs(sysroot), objects


# --------------------------------------------------------------------------- the fixture itself


def test_the_fixture_holds_the_image_as_ostree_ext_holds_a_pulled_one(host: Host) -> None:
    sysroot = host.sysroot
    (deployment,) = fb.deployments(sysroot)
    assert origin_of(deployment) == IMAGE_ORIGIN
    merge = image_commit(sysroot)
    assert commit_of(deployment) == merge, "the deployment is the image's merge commit"
    # The ref, written out by hand in fixtures/build.py, is the one lulayer computes.
    assert ImageReference.parse(fb.IMAGE_REFERENCE).ostree_ref == fb.IMAGE_REF
    assert fb.REF not in refs(sysroot), "an image-based host has no ostree ref of its own"
    assert parent_of(sysroot, merge) is None
    meta = metadata(sysroot, merge)
    manifest = meta.lookup_value("ostree.manifest", GLib.VariantType("s")).unpack()
    assert digest_of(sysroot, merge) == "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
    config = json.loads(meta.lookup_value("ostree.container.image-config", GLib.VariantType("s")).unpack())
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == fb.OS_VERSION
    (layer,) = json.loads(manifest)["layers"]
    blob_ref = fb.BLOB_REF_PREFIX + layer["digest"].replace(":", "_3A_")
    assert blob_ref in refs(sysroot)
    # The rpmdb is where the layout keeps it, and only there.
    db = deployment / host.layout.dbpath.lstrip("/")
    assert db.is_dir() and not db.is_symlink() and (db / "rpmdb.sqlite").is_file()
    other = RpmdbLayout.SYSIMAGE if host.layout is RpmdbLayout.RPM_OSTREE else RpmdbLayout.RPM_OSTREE
    assert not (deployment / other.dbpath.lstrip("/")).is_dir() or (deployment / other.dbpath.lstrip("/")).is_symlink()
    assert host.rpm_names(deployment) == BASE
    ostree_fsck(sysroot)


# --------------------------------------------------------------------------- install, uninstall


def test_install_layers_onto_the_image_and_keeps_the_origin_as_it_was(host: Host) -> None:
    sysroot, live = host.sysroot, booted(host.sysroot)
    extra = ("[origin]\ncustom-url=https://example.com/os\ncustom-description=Example OS\n\n"
             "[lulayer-test]\nkept=yes\n")
    origin_file = live.with_name(live.name + ".origin")
    # (No comment: libostree drops them when it loads an origin, so no tool built on it keeps one.)
    origin_file.write_text(IMAGE_ORIGIN + extra.replace("[origin]\n", ""))
    before = origin_file.read_text()
    merge = image_commit(sysroot)

    out = host.run("install", "htop")

    assert "Added: htop-3.3.0-1.fc41.x86_64" in out
    new = pending(sysroot)
    assert new != live
    assert host.rpm_names(new) == WITH_HTOP
    assert "htop-3.3.0" in host.rpm(new, "-q", "htop")
    text = origin_of(new)
    assert f"\ncontainer-image-reference={fb.IMAGE_REFERENCE}\n" in text
    assert "custom-url=https://example.com/os" in text
    assert "custom-description=Example OS" in text and "[lulayer-test]\nkept=yes" in text
    assert "refspec" not in text
    assert text.endswith("[packages]\nrequested=htop;\n")
    assert origin_file.read_text() == before, "the booted deployment's origin is not touched"
    # The base commit is the image's merge commit, found as rpm-ostree finds it.
    meta = metadata(sysroot, commit_of(new))
    assert meta.lookup_value("rpmostree.clientlayer", GLib.VariantType("b")).unpack() is True
    assert parent_of(sysroot, commit_of(new)) == merge
    assert meta.lookup_value("ostree.manifest-digest", None) is None, "the digest is the image's, not the layer's"

    rebooted = fb.reboot(sysroot)
    assert rebooted == new
    assert_htop_runs(rebooted)
    ostree_fsck(sysroot)


def test_uninstall_of_every_package_deploys_the_image_itself(host: Host) -> None:
    sysroot = host.sysroot
    host.run("install", "htop")
    fb.reboot(sysroot)

    host.run("uninstall", "htop")

    new = pending(sysroot)
    assert commit_of(new) == image_commit(sysroot), "nothing layered: the image's merge commit, as bootc has it"
    assert host.rpm_names(new) == BASE
    # No [packages] group left: bootc would take it for rpm-ostree state (lib/src/utils.rs).
    assert origin_of(new) == IMAGE_ORIGIN
    assert not (new / "usr/bin/htop").exists()


def test_install_live_and_uninstall_live_change_the_running_system(host: Host) -> None:
    sysroot, live = host.sysroot, booted(host.sysroot)

    host.run("install", "htop", "--live")

    assert_htop_runs(live)
    assert host.rpm_names(live) == WITH_HTOP
    assert host.rpm_names(pending(sysroot)) == WITH_HTOP
    assert origin_of(pending(sysroot)) == IMAGE_ORIGIN + "\n[packages]\nrequested=htop;\n"

    host.run("uninstall", "htop", "--live")

    assert chroot(live, "htop").returncode != 0
    assert host.rpm_names(live) == BASE
    assert commit_of(pending(sysroot)) == image_commit(sysroot)
    assert origin_of(pending(sysroot)) == IMAGE_ORIGIN
    ostree_fsck(sysroot)


def test_apply_live_applies_the_pending_deployment(host: Host) -> None:
    live = booted(host.sysroot)
    host.run("install", "htop")
    assert chroot(live, "htop").returncode != 0

    host.run("apply-live")

    assert_htop_runs(live)
    assert host.rpm_names(live) == WITH_HTOP
    assert "LiveCommit" in host.run("status")

    host.run("apply-live", "--reset")
    assert chroot(live, "htop").returncode != 0
    assert host.rpm_names(live) == BASE


# --------------------------------------------------------------------------- status


def test_status_shows_the_image_reference_and_its_digest(host: Host) -> None:
    sysroot = host.sysroot
    digest = digest_of(sysroot, image_commit(sysroot))
    lines = host.run("status").splitlines()
    assert lines[1] == f"● {fb.IMAGE_REFERENCE} (booted)"
    assert lines[2] == f"             Digest: {digest}"
    assert lines[3] == f"            Version: {fb.OS_VERSION}"

    host.run("install", "htop")

    text = host.run("status")
    layered, booted_part = text.split("\n\n")[:2]
    assert layered.splitlines()[1:4] == [f"  {fb.IMAGE_REFERENCE} (pending)", f"             Digest: {digest}",
                                         f"            Version: {fb.OS_VERSION}"]
    assert f"         BaseCommit: {image_commit(sysroot)}" in layered
    assert "    LayeredPackages: htop" in layered
    assert booted_part.startswith(f"● {fb.IMAGE_REFERENCE} (booted)\n             Digest: {digest}")
    deps = json.loads(host.run("status", "--json"))["deployments"]
    assert [d["container-image-reference"] for d in deps] == [fb.IMAGE_REFERENCE] * 2
    assert [d["container-image-reference-digest"] for d in deps] == [digest] * 2
    assert deps[0]["base-checksum"] == image_commit(sysroot)


# --------------------------------------------------------------------------- rollback, cleanup


def test_rollback_returns_to_the_image_and_keeps_its_origin(host: Host) -> None:
    sysroot = host.sysroot
    image = booted(sysroot)
    host.run("install", "htop")
    layered = fb.reboot(sysroot)

    out = host.run("rollback")

    assert f"Moving {commit_of(image)[:12]}" in out
    assert fb.deployments(sysroot) == [image, layered]
    assert fb.reboot(sysroot) == image
    assert origin_of(image) == IMAGE_ORIGIN
    assert origin_of(layered) == IMAGE_ORIGIN + "\n[packages]\nrequested=htop;\n"
    assert host.rpm_names(image) == BASE


def test_cleanup_removes_deployments_and_keeps_the_image(host: Host) -> None:
    sysroot = host.sysroot
    image_refs = {r for r in refs(sysroot) if r.startswith("ostree/container/")}
    host.run("install", "htop")

    host.run("cleanup", "--pending")

    assert fb.deployments(sysroot) == [booted(sysroot)]
    host.run("install", "htop")
    layered = fb.reboot(sysroot)
    host.run("cleanup", "--rollback", "--repomd")
    assert fb.deployments(sysroot) == [layered]
    assert image_refs <= refs(sysroot), "the image's refs are ostree-ext's, never lulayer's to drop"
    assert parent_of(sysroot, commit_of(layered)) == image_commit(sysroot)
    ostree_fsck(sysroot)
    assert "(booted)" in host.run("status")


# --------------------------------------------------------------------------- upgrade


def test_upgrade_relayers_onto_the_newer_image_the_repository_holds(host: Host) -> None:
    sysroot = host.sysroot
    host.run("install", "htop")
    fb.reboot(sysroot)
    newer = fb.hold_newer_image(sysroot)

    out = host.run("upgrade")

    assert f"Newer image held for {fb.IMAGE_REFERENCE}: {fb.NEWER_OS_VERSION} ({digest_of(sysroot, newer)})" in out
    new = pending(sysroot)
    assert parent_of(sysroot, commit_of(new)) == newer
    assert (new / fb.NEWER_IMAGE_FILE).read_text() == f"{fb.NEWER_OS_VERSION}\n"
    assert host.rpm_names(new) == WITH_HTOP
    assert origin_of(new) == IMAGE_ORIGIN + "\n[packages]\nrequested=htop;\n"
    first = host.run("status").split("\n\n")[0]
    assert f"Digest: {digest_of(sysroot, newer)}" in first and f"Version: {fb.NEWER_OS_VERSION}" in first
    rebooted = fb.reboot(sysroot)
    assert chroot(rebooted, "htop").returncode == 0
    ostree_fsck(sysroot)


def test_upgrade_without_packages_deploys_the_newer_image_itself(host: Host) -> None:
    sysroot = host.sysroot
    newer = fb.hold_newer_image(sysroot)

    host.run("upgrade")

    assert commit_of(pending(sysroot)) == newer
    assert origin_of(pending(sysroot)) == IMAGE_ORIGIN


@pytest.mark.parametrize("layered", [True, False], ids=["layered", "plain"])
def test_upgrade_with_no_newer_image_held_says_what_fetches_one(host: Host, layered: bool) -> None:
    sysroot = host.sysroot
    if layered:
        host.run("install", "htop")
        fb.reboot(sysroot)
    before = snapshot(sysroot)

    proc = lulayer(sysroot, "upgrade")

    fetch = ("`rpm-ostree upgrade` fetches it and keeps the layered packages (the .origin is shared)" if layered
             else "`bootc upgrade` or `rpm-ostree upgrade` fetches it")
    assert proc.stdout.splitlines() == [f"No newer image is held for {fb.IMAGE_REFERENCE}: {fetch}.",
                                        "No upgrade available."], describe(proc)
    assert snapshot(sysroot) == before


def test_upgrade_does_not_go_back_to_an_older_image(image_sysroot: Path) -> None:
    sysroot = image_sysroot
    older = image_commit(sysroot)
    fb.hold_newer_image(sysroot)
    lulayer(sysroot, "upgrade")
    fb.reboot(sysroot)
    # The ref moved back (an image pulled by digest, a rollback of the ref): not newer than the base.
    run(["ostree", f"--repo={repo_of(sysroot)}", "refs", "--force", f"--create={fb.IMAGE_REF}", older], check=True)
    before = snapshot(sysroot)

    out = lulayer(sysroot, "upgrade").stdout

    assert f"No newer image is held for {fb.IMAGE_REFERENCE}" in out
    assert snapshot(sysroot) == before


def test_the_bases_of_layered_deployments_outlive_a_prune_by_another_tool(image_sysroot: Path) -> None:
    """After the image moves on, a layered rollback's base is its parent and nothing else: rpm-ostree
    keeps such bases under rpmostree/base/N (rust/src/daemon.rs generate_baselayer_refs), so does lulayer."""
    sysroot = image_sysroot
    first = image_commit(sysroot)
    lulayer(sysroot, "install", "htop")
    old_layered = fb.reboot(sysroot)
    newer = fb.hold_newer_image(sysroot)
    lulayer(sysroot, "upgrade")
    new_layered = fb.reboot(sysroot)
    assert fb.deployments(sysroot)[:2] == [new_layered, old_layered]
    assert {r: run(["ostree", f"--repo={repo_of(sysroot)}", "rev-parse", r], check=True).stdout.strip()
            for r in refs(sysroot) if r.startswith("rpmostree/base/")} == {"rpmostree/base/0": newer,
                                                                          "rpmostree/base/1": first}

    # ostree's own undeploy prunes whatever no ref or deployment holds.
    fb.ostree_admin(sysroot, "undeploy", "2")

    assert fb.deployments(sysroot) == [new_layered, old_layered]
    assert digest_of(sysroot, first).startswith("sha256:")
    assert "(rollback)" in lulayer(sysroot, "status").stdout
    lulayer(sysroot, "rollback")
    assert fb.reboot(sysroot) == old_layered
    lulayer(sysroot, "uninstall", "htop")
    assert commit_of(pending(sysroot)) == first
    ostree_fsck(sysroot)


# --------------------------------------------------------------------------- what rpm-ostree reads


def test_a_layered_commit_carries_every_key_rpm_ostree_reads_with_its_type(host: Host) -> None:
    sysroot = host.sysroot
    host.run("install", "htop", "postscript")
    new = pending(sysroot)
    meta = metadata(sysroot, commit_of(new))

    for key, (type_string, where) in CLIENTLAYER_KEYS.items():
        value = meta.lookup_value(key, None)
        assert value is not None, f"{key} is missing; rpm-ostree reads it in {where}"
        assert value.get_type_string() == type_string, f"{key} is {value.get_type_string()}; {where} reads it as " \
                                                       f"{type_string}"
    assert meta.lookup_value("rpmostree.clientlayer", None).unpack() is True
    assert meta.lookup_value("rpmostree.clientlayer_version", None).unpack() == CLIENTLAYER_VERSION
    assert meta.lookup_value("rpmostree.packages", None).unpack() == ["htop", "postscript"]
    for key in ("rpmostree.modules", "rpmostree.removed-base-packages", "rpmostree.replaced-base-packages"):
        assert meta.lookup_value(key, None).n_children() == 0, key
    assert len(meta.lookup_value("rpmostree.state-sha512", None).unpack()) == 128
    # The package list is the new tree's rpmdb, sorted by name as libdnf sorts it.
    pkglist = meta.lookup_value("rpmostree.rpmdb.pkglist", None).unpack()
    listed = host.rpm(new, "-qa", "--qf", "%{NAME} %{EPOCHNUM} %{VERSION} %{RELEASE} %{ARCH}\n").splitlines()
    assert pkglist == sorted(tuple(line.split()) for line in listed)
    repos = meta.lookup_value("rpmostree.rpmmd-repos", None).unpack()
    assert [r["id"] for r in repos] == [fb.REPO_ID] and repos[0]["timestamp"] > 0
    # The parent is the base commit: rpm-ostree's daemon.rs takes it as such (and panics without one).
    assert parent_of(sysroot, commit_of(new)) == image_commit(sysroot)


def test_a_layered_commit_on_an_ostree_ref_carries_the_keys_and_the_base_version(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    meta = metadata(sysroot, commit_of(pending(sysroot)))
    for key, (type_string, where) in CLIENTLAYER_KEYS.items():
        value = meta.lookup_value(key, None)
        assert value is not None and value.get_type_string() == type_string, f"{key}: {where}"
    # rpm-ostree copies the base commit's version and nothing else of its metadata.
    assert meta.lookup_value("version", GLib.VariantType("s")).unpack() == fb.OS_VERSION
    assert "\nbaserefspec=" + fb.REF in "\n" + origin_of(pending(sysroot))


# --------------------------------------------------------------------------- bad origins


BAD_ORIGINS = {
    "both": (f"[origin]\nrefspec={fb.REF}\ncontainer-image-reference={fb.IMAGE_REFERENCE}\n",
             "has both [origin] refspec/baserefspec and container-image-reference"),
    "baserefspec-and-image": (f"[origin]\nbaserefspec={fb.REF}\ncontainer-image-reference={fb.IMAGE_REFERENCE}\n"
                              "[packages]\nrequested=htop;\n",
                              "has both [origin] refspec/baserefspec and container-image-reference"),
    "neither": ("[origin]\ncustom-url=https://example.com\n[packages]\nrequested=htop;\n",
                "has none of [origin] refspec, baserefspec, container-image-reference"),
}
COMMANDS = (("install", "htop"), ("install", "htop", "--live"), ("uninstall", "--all"), ("upgrade",),
            ("apply-live",), ("status",), ("rollback",), ("cleanup", "--pending"))


@pytest.mark.parametrize("bad", list(BAD_ORIGINS), ids=str)
def test_an_origin_with_both_forms_or_neither_is_refused_by_every_command(image_sysroot: Path, bad: str) -> None:
    sysroot = image_sysroot
    data, says = BAD_ORIGINS[bad]
    live = booted(sysroot)
    live.with_name(live.name + ".origin").write_text(data)
    before = snapshot(sysroot)

    for args in COMMANDS:
        line = one_error_line(lulayer(sysroot, *args, check=False))
        assert says in line, line
        # It names the keys lulayer reads, and the file.
        assert "refspec, baserefspec or container-image-reference" in line, line
        assert f"{live}.origin" in line, line
        assert snapshot(sysroot) == before, args


UNKNOWN_REFERENCE = "ostree-unverified-image:ftp:example.com/os:41"


def test_an_image_reference_in_an_unknown_form_is_kept_and_refused_only_by_upgrade(image_sysroot: Path) -> None:
    sysroot = image_sysroot
    live = booted(sysroot)
    origin = f"[origin]\ncontainer-image-reference={UNKNOWN_REFERENCE}\n"
    live.with_name(live.name + ".origin").write_text(origin)

    assert f"● {UNKNOWN_REFERENCE} (booted)" in lulayer(sysroot, "status").stdout
    lulayer(sysroot, "install", "htop", "--live")
    assert origin_of(pending(sysroot)) == origin + "\n[packages]\nrequested=htop;\n"
    assert chroot(live, "htop").returncode == 0
    before = snapshot(sysroot)

    line = one_error_line(lulayer(sysroot, "upgrade", check=False))

    assert f"cannot read the container-image-reference {UNKNOWN_REFERENCE!r}: unknown transport 'ftp'" in line
    assert snapshot(sysroot) == before
    lulayer(sysroot, "uninstall", "htop")
    assert origin_of(pending(sysroot)) == origin
