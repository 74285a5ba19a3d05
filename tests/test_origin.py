"""The .origin key file: what lulayer reads and writes, with rpm-ostree's keys (no root, no sysroot).

rpm-ostree's reading and writing of the same file: coreos/rpm-ostree rust/src/origin.rs
(origin_to_treefile_inner, treefile_to_origin_inner) and rust/src/treefile.rs
(may_require_local_assembly). Image references: containers/bootc ostree-ext/src/container/mod.rs
(OstreeImageReference) and ostree-ext/src/refescape.rs.
"""

from __future__ import annotations

import pytest

from lulayer.errors import SysrootError
from lulayer.imageref import BadImageReference, ImageReference, Transport, escape_for_ref
from lulayer.sysroot import Origin, RefspecKind

FCOS = "ostree-remote-registry:fedora:quay.io/fedora/fedora-coreos:stable"


def text(origin: Origin) -> str:
    data, _ = origin.to_keyfile().to_data()
    return str(data)


def test_a_plain_origin_reads_its_refspec_and_no_packages() -> None:
    o = Origin.from_data("[origin]\nrefspec=fedora:fedora/41/x86_64/silverblue\n")
    assert o.refspec == "fedora:fedora/41/x86_64/silverblue"
    assert o.requested == ()


def test_refspec_wins_over_baserefspec_as_in_rpm_ostree() -> None:
    assert Origin.from_data("[origin]\nbaserefspec=os:old\nrefspec=os:new\n").refspec == "os:new"


def test_a_checksum_refspec_is_a_pinned_commit() -> None:
    assert Origin.from_data(f"[origin]\nrefspec={'a' * 64}\n").kind is RefspecKind.CHECKSUM
    assert Origin.from_data("[origin]\nrefspec=os:base\n").kind is RefspecKind.OSTREE


def test_a_layered_origin_reads_baserefspec_and_requested() -> None:
    o = Origin.from_data("[origin]\nbaserefspec=os:base\n\n[packages]\nrequested=htop;vim;\n")
    assert o.refspec == "os:base"
    assert o.requested == ("htop", "vim")


def test_requesting_packages_writes_baserefspec_as_rpm_ostree_does() -> None:
    o = Origin.from_data("[origin]\nrefspec=os:base\n").with_requested(["vim", "htop", "vim"])
    out = text(o)
    assert "baserefspec=os:base" in out
    assert "\nrefspec=" not in out
    assert "requested=htop;vim;" in out
    assert Origin.from_data(out).requested == ("htop", "vim")


def test_dropping_every_package_goes_back_to_refspec() -> None:
    o = Origin.from_data("[origin]\nbaserefspec=os:base\n[packages]\nrequested=htop;\n").with_requested(())
    out = text(o)
    assert "\nrefspec=os:base" in "\n" + out
    assert "baserefspec" not in out
    assert "requested" not in out


def test_keys_lulayer_does_not_own_are_kept_with_their_comments() -> None:
    src = ("# pinned by the admin\n[origin]\nrefspec=os:base\nunlocked=hotfix\n\n"
           "[rpmostree]\nregenerate-initramfs=true\n")
    out = text(Origin.from_data(src).with_requested(["htop"]))
    assert "# pinned by the admin" in out
    assert "unlocked=hotfix" in out
    assert "[rpmostree]\nregenerate-initramfs=true" in out


@pytest.mark.parametrize("data", ["[origin]\n", "[origin]\nrefspec=\n", "[packages]\nrequested=htop;\n", "",
                                  "[origin]\ncontainer-image-reference=\n"])
def test_an_origin_with_none_of_the_forms_is_refused_naming_the_keys(data: str) -> None:
    with pytest.raises(SysrootError) as e:
        Origin.from_data(data)
    assert e.value.message == ("the deployment's .origin has none of [origin] refspec, baserefspec, "
                               "container-image-reference")
    assert e.value.hint is not None and "refspec, baserefspec or container-image-reference" in e.value.hint


@pytest.mark.parametrize("key", ["refspec", "baserefspec"])
def test_an_origin_with_both_forms_is_refused_naming_the_keys(key: str) -> None:
    with pytest.raises(SysrootError) as e:
        Origin.from_data(f"[origin]\n{key}=os:base\ncontainer-image-reference={FCOS}\n")
    assert e.value.message == ("the deployment's .origin has both [origin] refspec/baserefspec and "
                               "container-image-reference")


# --------------------------------------------------------------------------- container-image-reference


def test_a_container_origin_reads_the_reference_as_it_is() -> None:
    o = Origin.from_data(f"[origin]\ncontainer-image-reference={FCOS}\n")
    assert o.kind is RefspecKind.CONTAINER
    assert o.refspec == FCOS
    assert o.requested == ()


def test_requesting_packages_on_a_container_origin_keeps_the_reference_and_every_other_key() -> None:
    src = (f"# set by bootc\n[origin]\ncontainer-image-reference={FCOS}\ncustom-url=https://example.com\n\n"
           "[libostree-transient]\npinned=true\n")
    out = text(Origin.from_data(src).with_requested(["vim", "htop"]))
    assert f"\ncontainer-image-reference={FCOS}\n" in out
    assert "refspec" not in out  # a container origin never gets one (rust/src/origin.rs treefile_to_origin_inner)
    assert "custom-url=https://example.com" in out
    assert "# set by bootc" in out
    assert "[libostree-transient]\npinned=true" in out
    assert "[packages]\nrequested=htop;vim;" in out
    assert Origin.from_data(out).requested == ("htop", "vim")


def test_dropping_every_package_from_a_container_origin_leaves_no_packages_group() -> None:
    # bootc takes any [packages] group for rpm-ostree state and refuses to upgrade
    # (containers/bootc lib/src/utils.rs origin_has_rpmostree_stuff).
    src = f"[origin]\ncontainer-image-reference={FCOS}\n\n[packages]\nrequested=htop;\n"
    out = text(Origin.from_data(src).with_requested(()))
    assert out == f"[origin]\ncontainer-image-reference={FCOS}\n"


def test_a_packages_group_with_other_keys_stays_when_requested_goes() -> None:
    sha = "4ed748ba060fce4571e7ef19f3f5ed6209f67dbac8327af0d38ea70b96d2f723"
    src = (f"[origin]\ncontainer-image-reference={FCOS}\n"
           f"[packages]\nrequested=htop;\nrequested-local={sha}:foo-1-1.x86_64;\n")
    out = text(Origin.from_data(src).with_requested(()))
    assert f"[packages]\nrequested-local={sha}:foo-1-1.x86_64;" in out
    assert "requested=" not in out


@pytest.mark.parametrize("reference", [
    "ostree-unverified-registry:quay.io/example/os:41",
    FCOS,
    "ostree-unverified-image:docker://quay.io/example/os:41",
    "ostree-image-signed:registry:quay.io/example/os@sha256:" + "1" * 64,
    "ostree-remote-image:fedora:oci-archive:/var/tmp/os.ociarchive",
    "ostree-unverified-image:containers-storage:localhost/os",
    # Forms lulayer does not read: kept byte for byte all the same.
    "ostree-unverified-image:ftp:example.com/os",
    "docker://quay.io/example/os:41",
    "quay.io/example/os:41",
    "odd ; chars, and\\s escapes",
])
def test_an_image_reference_is_never_rewritten(reference: str) -> None:
    src = f"[origin]\ncontainer-image-reference={reference}\n"
    out = text(Origin.from_data(src).with_requested(["htop"]))
    assert f"\ncontainer-image-reference={reference}\n" in "\n" + out
    back = text(Origin.from_data(out).with_requested(()))
    assert back == src


def test_an_unknown_image_reference_is_refused_only_where_it_must_be_read() -> None:
    o = Origin.from_data("[origin]\ncontainer-image-reference=ostree-unverified-image:ftp:example.com/os\n")
    assert o.kind is RefspecKind.CONTAINER
    with pytest.raises(SysrootError, match=r"cannot read the container-image-reference .*unknown transport 'ftp'"):
        o.image()


# --------------------------------------------------------------------------- baserefspec, as rpm-ostree decides


@pytest.mark.parametrize("extra", [
    "[overrides]\nremove=docker;\n",
    "[overrides]\nreplace=repo=foobar,systemd;\n",
    "[packages]\nrequested-local=4ed748ba060fce4571e7ef19f3f5ed6209f67dbac8327af0d38ea70b96d2f723:foo-1.2-3.x86_64;\n",
    "[rpmostree]\nregenerate-initramfs=true\n",
    "[rpmostree]\ninitramfs-etc=/etc/foo.conf;\n",
    "[rpmostree]\nex-cliwrap=true\n",
])
def test_an_origin_that_needs_local_assembly_keeps_baserefspec_without_packages(extra: str) -> None:
    # rust/src/treefile.rs may_require_local_assembly: not only requested packages.
    out = text(Origin.from_data(f"[origin]\nbaserefspec=os:base\n{extra}").with_requested(()))
    assert "baserefspec=os:base" in out
    assert "\nrefspec=" not in "\n" + out


@pytest.mark.parametrize("extra", ["[overrides]\nreplace=repo=foobar;\n", "[rpmostree]\nregenerate-initramfs=false\n"])
def test_an_origin_needing_nothing_local_goes_back_to_refspec(extra: str) -> None:
    out = text(Origin.from_data(f"[origin]\nbaserefspec=os:base\n{extra}[packages]\nrequested=htop;\n")
               .with_requested(()))
    assert "\nrefspec=os:base" in "\n" + out
    assert "baserefspec" not in out


# --------------------------------------------------------------------------- image references and their refs


@pytest.mark.parametrize(("reference", "sigverify", "transport", "name"), [
    ("ostree-unverified-registry:quay.io/example/os:41", "ostree-unverified-image", Transport.REGISTRY,
     "quay.io/example/os:41"),
    (FCOS, "ostree-remote-image:fedora", Transport.REGISTRY, "quay.io/fedora/fedora-coreos:stable"),
    ("ostree-remote-image:fedora:docker://quay.io/x/y", "ostree-remote-image:fedora", Transport.REGISTRY,
     "quay.io/x/y"),
    ("ostree-unverified-image:registry:quay.io/x/y", "ostree-unverified-image", Transport.REGISTRY, "quay.io/x/y"),
    ("ostree-image-signed:oci:/srv/os", "ostree-image-signed", Transport.OCI, "/srv/os"),
    ("ostree-unverified-image:oci-archive:/x.ociarchive", "ostree-unverified-image", Transport.OCI_ARCHIVE,
     "/x.ociarchive"),
    ("ostree-unverified-image:docker-archive:/x.tar", "ostree-unverified-image", Transport.DOCKER_ARCHIVE, "/x.tar"),
    ("ostree-unverified-image:containers-storage:localhost/os", "ostree-unverified-image",
     Transport.CONTAINERS_STORAGE, "localhost/os"),
    ("ostree-unverified-image:dir:/srv/os", "ostree-unverified-image", Transport.DIR, "/srv/os"),
])
def test_image_references_are_read_as_ostree_ext_reads_them(reference: str, sigverify: str, transport: Transport,
                                                              name: str) -> None:
    assert ImageReference.parse(reference) == ImageReference(sigverify, transport, name)


@pytest.mark.parametrize(("reference", "why"), [
    ("quay.io/example/os:41", "unknown image reference scheme 'quay.io/example/os'"),
    ("ostree-unverified-image:ftp:example.com/os", "unknown transport 'ftp'"),
    ("ostree-remote-registry:quay.io", "missing second ':'"),
    ("ostree-unverified-image:registry:", "empty image name"),
    ("ostree-unverified-image:docker:quay.io/x", "missing // in docker://"),
    ("registry", "missing ':'"),
])
def test_image_references_ostree_ext_refuses_are_refused(reference: str, why: str) -> None:
    with pytest.raises(BadImageReference, match=why):
        ImageReference.parse(reference)


@pytest.mark.parametrize(("text_", "escaped"), [
    # The examples of ostree-ext/src/refescape.rs, its doc comments and its tests.
    ("registry:quay.io/coreos/fedora:latest", "registry_3A_quay_2E_io/coreos/fedora_3A_latest"),
    ("localhost:5000/foo:latest", "localhost_3A_5000/foo_3A_latest"),
    ("foo", "foo"),
    ("foo/bar/baz-blah/foo", "foo/bar/baz-blah/foo"),
    # Its rules at the corners: a '/' first, last, after a non-alphanumeric; '_' and non-ASCII.
    ("/", "_2F_"),
    ("blah/", "blah_2F_"),
    ("/foo/", "_2F_foo_2F_"),
    ("a-/b", "a-_2F_b"),
    ("a_b", "a__b"),
    ("é", "_E9_"),
    ("日", "_65E5_"),
])
def test_refs_are_escaped_as_ostree_ext_escapes_them(text_: str, escaped: str) -> None:
    assert escape_for_ref(text_) == escaped


def test_an_image_is_kept_under_the_ref_ostree_ext_writes() -> None:
    # The form on Fedora CoreOS hosts: a registry image is written docker://NAME, then escaped.
    ref = "ostree/container/image/docker_3A__2F__2F_quay_2E_io/fedora/fedora-coreos_3A_stable"
    assert ImageReference.parse(FCOS).ostree_ref == ref
    assert ImageReference.parse("ostree-unverified-registry:quay.io/fedora/fedora-coreos:stable").ostree_ref == ref
    assert (ImageReference.parse("ostree-unverified-image:oci:/srv/os").ostree_ref
            == "ostree/container/image/oci_3A__2F_srv/os")


def test_an_unreadable_origin_is_refused() -> None:
    with pytest.raises(SysrootError, match="cannot be read"):
        Origin.from_data("this is not a key file\x00")
