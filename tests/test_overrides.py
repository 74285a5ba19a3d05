"""Base package overrides (`lulayer override remove|replace|reset`), end to end on fixture sysroots.

What rpm-ostree defines is matched and checked here against its source (coreos/rpm-ostree):
the origin keys `[overrides] remove`, `replace=repo=NAME,PKG,...` and `replace-local=SHA256:NEVRA`
(rust/src/origin.rs), the commit keys rpmostree.removed-base-packages / replaced-base-packages
(local files) / replaced-base-remote-packages with their
(nevra, name, epoch, version, release, arch) tuples (src/libpriv/rpmostree-core.cxx), the status
lines RemovedBasePackages, LocalOverrides and RemoteOverrides (src/app/rpmostree-builtin-status.cxx),
the JSON keys requested-base-removals, requested-base-local-replacements,
requested-base-remote-replacements (rust/src/daemon.rs), base-removals, base-local-replacements and
base-remote-replacements (src/daemon/rpmostreed-deployment-utils.cxx), and the
refusals' words: 'Package "X" not found', "Override already exists for package 'X'", "No overrides
for package 'X'" (src/daemon/rpmostreed-transaction-types.cxx, rust/src/treefile.rs), "No matches
for 'X' in repo 'Y'" (src/libpriv/rpmostree-core.cxx).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import (
    booted,
    build_spec_dir,
    chroot,
    lulayer,
    one_error_line,
    origin_of,
    ostree_fsck,
    pending,
    rpm,
    rpm_names,
    staged_record,
)
from tests.test_errors import State
from tests.test_local_rpms import metadata_sha256, refs
from tests.test_status_json import check_status

pytestmark = pytest.mark.root

APP_FILES = ("usr/bin/baseapp", "usr/share/applications/org.example.BaseApp.desktop", "usr/share/baseapp")
UPDATES = "updates"  # the second repository, offering baseapp 2.0


def app_files(root: Path) -> list[str]:
    """The base application's paths that root has."""
    return [f for f in APP_FILES if (root / f).exists()]


def deployment_json(sysroot: Path, index: int = 0) -> dict[str, object]:
    """Deployment index of `status --json`, the whole document checked against rpm-ostree's keys."""
    return check_status(json.loads(lulayer(sysroot, "status", "--json").stdout))[index]


def add_updates_repo(sysroot: Path, tmp_path: Path) -> None:
    """A second enabled repository, `updates`, offering baseapp 2.0 (fixtures/specs/overrides/)."""
    rpms = build_spec_dir(fixture_build.SPECS / "overrides", "overrides-rpms")
    repo = fixture_build.make_repo(tmp_path / UPDATES, sorted(rpms.glob("*.rpm")))
    (booted(sysroot) / "etc/yum.repos.d" / f"{UPDATES}.repo").write_text(
        f"[{UPDATES}]\nname=updates\nbaseurl=file://{repo}\nenabled=1\ngpgcheck=0\n")


def test_base_app_removed_in_favour_of_a_flatpak_and_reset_brings_it_back(sysroot: Path) -> None:
    """The Silverblue case: the image's application goes (its flatpak replaces it), with its rpmdb
    entry; the booted deployment keeps it until the reboot; reset brings it back."""
    base = booted(sysroot)
    assert app_files(base) == list(APP_FILES)

    out = lulayer(sysroot, "override", "remove", "baseapp").stdout

    assert "Removed: baseapp-1.0-1.fc41.noarch" in out
    new = pending(sysroot)
    assert new != base and app_files(new) == []
    assert "baseapp" not in rpm_names(new) and rpm(new, "-q", "baseapp").returncode == 1
    assert rpm_names(new) == set(fixture_build.BASE_PACKAGES) - {"baseapp"}
    assert app_files(base) == list(APP_FILES)  # the running system keeps it until the reboot
    origin = origin_of(new)
    assert "baserefspec=" in origin and "\n[overrides]\nremove=baseapp;\n" in origin
    text = lulayer(sysroot, "status").stdout
    assert "RemovedBasePackages: baseapp 1.0-1.fc41" in text
    d = deployment_json(sysroot)
    assert d["requested-base-removals"] == ["baseapp"]
    assert d["base-removals"] == [["baseapp-1.0-1.fc41.noarch", "baseapp", 0, "1.0", "1.fc41", "noarch"]]
    assert d["packages"] == [] and d["base-local-replacements"] == [] and d["base-remote-replacements"] == {}
    ostree_fsck(sysroot)

    fixture_build.reboot(sysroot)
    assert app_files(booted(sysroot)) == [] and chroot(booted(sysroot), "baseapp").returncode != 0
    lulayer(sysroot, "install", "htop")  # layering keeps the override
    assert app_files(pending(sysroot)) == [] and "htop" in rpm_names(pending(sysroot))

    lulayer(sysroot, "override", "reset", "baseapp")

    back = pending(sysroot)
    assert app_files(back) == list(APP_FILES) and "baseapp" in rpm_names(back) and "htop" in rpm_names(back)
    assert "[overrides]" not in origin_of(back)
    d = deployment_json(sysroot)
    assert d["requested-base-removals"] == [] and d["base-removals"] == [] and d["packages"] == ["htop"]
    fixture_build.reboot(sysroot)
    assert chroot(booted(sysroot), "baseapp", check=True).stdout == "baseapp 1.0\n"
    ostree_fsck(sysroot)


def test_override_remove_live_needs_allow_replacement_then_goes_at_once(sysroot: Path) -> None:
    base = booted(sysroot)
    state = State(sysroot)

    proc = lulayer(sysroot, "override", "remove", "baseapp", "--live", check=False)

    one_error_line(proc, "removing or replacing base packages live", "--allow-replacement")
    state.assert_unchanged()
    assert staged_record(sysroot) is None

    lulayer(sysroot, "override", "remove", "baseapp", "--live", "--allow-replacement")

    assert app_files(base) == [] and chroot(base, "baseapp").returncode != 0
    assert "baseapp" not in rpm_names(base)  # the live rpmdb
    assert app_files(pending(sysroot)) == []
    live = lulayer(sysroot, "status").stdout
    assert "LiveDiff: 1 removed" in live

    # Back live: only additions, which need no --allow-replacement.
    lulayer(sysroot, "override", "reset", "baseapp", "--live")

    assert chroot(base, "baseapp", check=True).stdout == "baseapp 1.0\n"
    assert "baseapp" in rpm_names(base) and app_files(pending(sysroot)) == list(APP_FILES)
    ostree_fsck(sysroot)


def test_removing_a_base_package_the_base_needs_is_refused_naming_the_dependency(sysroot: Path) -> None:
    state = State(sysroot)

    proc = lulayer(sysroot, "override", "remove", "filesystem", check=False)

    one_error_line(proc, "cannot remove filesystem from the base image", "busybox-1.35.0-1.fc41 needs filesystem")
    state.assert_unchanged()


def test_layered_package_needing_a_removed_base_package_is_refused(sysroot: Path, tmp_path: Path) -> None:
    """A removed base package is not brought back from a repository to satisfy a layered one."""
    add_updates_repo(sysroot, tmp_path)
    spec = tmp_path / "specs" / "needs-baseapp.spec"
    spec.parent.mkdir()
    spec.write_text((fixture_build.SPECS / "baseapp.spec").read_text()
                    .replace("Name:           baseapp", "Name:           needs-baseapp")
                    .replace("Requires:       filesystem", "Requires:       baseapp")
                    .replace("/usr/bin/baseapp", "/usr/bin/needs-baseapp")
                    .replace("org.example.BaseApp", "org.example.NeedsBaseApp")
                    .replace("/usr/share/baseapp", "/usr/share/needs-baseapp"))
    fixture_build.make_repo(tmp_path / UPDATES, build_spec_dir(spec.parent, "needs-baseapp-rpms").glob("*.rpm"))
    lulayer(sysroot, "override", "remove", "baseapp")
    state = State(sysroot)

    proc = lulayer(sysroot, "install", "needs-baseapp", check=False)

    one_error_line(proc, "dependencies cannot be satisfied", "baseapp")
    state.assert_unchanged()


@pytest.mark.parametrize(("args", "needles"), [
    (("remove", "nosuch"), ('Package "nosuch" not found',)),
    (("replace", "baseapp"), ("--from repo=NAME",)),
    (("replace", "baseapp", "--from", "copr=x"), ("invalid override source 'copr=x'",)),
    (("replace", "baseapp", "--from", f"repo={fixture_build.REPO_ID}"),
     (f"No matches for 'baseapp' in repo '{fixture_build.REPO_ID}'",)),
    (("replace", "nosuch", "--from", "repo=lulayer-fixtures"), ('Package "nosuch" not found',)),
    (("reset", "baseapp"), ("No overrides for package 'baseapp'",)),
    (("reset",), ("no package named",)),
    (("reset", "baseapp", "--all"), ("Cannot specify PACKAGEs with --all",)),
])
def test_bad_override_is_refused_in_one_line_and_changes_nothing(sysroot: Path, args: tuple[str, ...],
                                                                 needles: tuple[str, ...]) -> None:
    state = State(sysroot)

    proc = lulayer(sysroot, "override", *args, check=False)

    one_error_line(proc, *needles)
    state.assert_unchanged()


def test_override_of_a_layered_or_overridden_package_is_refused(sysroot: Path) -> None:
    lulayer(sysroot, "install", "htop")
    lulayer(sysroot, "override", "remove", "baseapp")
    state = State(sysroot)

    one_error_line(lulayer(sysroot, "override", "remove", "htop", check=False),
                   "htop is a layered package", "lulayer uninstall htop")
    one_error_line(lulayer(sysroot, "override", "remove", "baseapp", check=False),
                   "Override already exists for package 'baseapp'")
    one_error_line(lulayer(sysroot, "override", "remove", "baseapp-1.0-1.fc41.noarch", check=False),
                   "Override already exists for package 'baseapp-1.0-1.fc41.noarch'")
    state.assert_unchanged()


def test_override_reset_all_drops_every_override_and_keeps_layered_packages(sysroot: Path, tmp_path: Path) -> None:
    add_updates_repo(sysroot, tmp_path)
    lulayer(sysroot, "install", "htop")
    lulayer(sysroot, "override", "remove", "baseapp")
    lulayer(sysroot, "override", "reset", "--all")

    new = pending(sysroot)
    assert "[overrides]" not in origin_of(new) and "requested=htop;" in origin_of(new)
    assert app_files(new) == list(APP_FILES) and "htop" in rpm_names(new)
    again = lulayer(sysroot, "override", "reset", "--all", "--unchanged-exit-77", check=False)
    assert again.returncode == 77 and "no overrides; nothing to do" in again.stdout


def test_override_replace_from_a_repository_follows_it(sysroot: Path, tmp_path: Path) -> None:
    add_updates_repo(sysroot, tmp_path)

    out = lulayer(sysroot, "override", "replace", "baseapp", "--from", f"repo={UPDATES}").stdout

    assert "baseapp-1.0-1.fc41.noarch -> baseapp-2.0-1.fc41.noarch" in out
    new = pending(sysroot)
    assert chroot(new, "baseapp", check=True).stdout == "baseapp 2.0\n"
    assert rpm(new, "-q", "baseapp", check=True).stdout == "baseapp-2.0-1.fc41.noarch\n"
    assert f"\n[overrides]\nreplace=repo={UPDATES},baseapp;\n" in origin_of(new)
    text = lulayer(sysroot, "status").stdout
    assert f"RemoteOverrides: repo={UPDATES}\n" in text and "└─ baseapp 1.0-1.fc41 -> 2.0-1.fc41" in text
    assert "LayeredPackages" not in text  # a replaced base package is not a layered one
    d = deployment_json(sysroot)
    assert d["requested-base-remote-replacements"] == [[f"repo={UPDATES}", ["baseapp"]]]
    assert d["base-remote-replacements"] == {f"repo={UPDATES}": [[
        ["baseapp-2.0-1.fc41.noarch", "baseapp", 0, "2.0", "1.fc41", "noarch"],
        ["baseapp-1.0-1.fc41.noarch", "baseapp", 0, "1.0", "1.fc41", "noarch"]]]}
    assert d["packages"] == []

    lulayer(sysroot, "install", "htop")  # a later install keeps the replacement
    assert rpm(pending(sysroot), "-q", "baseapp", check=True).stdout == "baseapp-2.0-1.fc41.noarch\n"

    lulayer(sysroot, "override", "reset", "baseapp")

    assert rpm(pending(sysroot), "-q", "baseapp", check=True).stdout == "baseapp-1.0-1.fc41.noarch\n"
    assert "[overrides]" not in origin_of(pending(sysroot))
    ostree_fsck(sysroot)


def test_override_replace_live_swaps_the_running_version(sysroot: Path, tmp_path: Path) -> None:
    add_updates_repo(sysroot, tmp_path)
    base = booted(sysroot)

    lulayer(sysroot, "override", "replace", "baseapp", "--from", f"repo={UPDATES}", "--live",
            "--allow-replacement")

    assert chroot(base, "baseapp", check=True).stdout == "baseapp 2.0\n"
    assert rpm(base, "-q", "baseapp", check=True).stdout == "baseapp-2.0-1.fc41.noarch\n"
    fixture_build.reboot(sysroot)
    assert chroot(booted(sysroot), "baseapp", check=True).stdout == "baseapp 2.0\n"


BASEAPP_2 = "baseapp-2.0-1.fc41.noarch"
BASEAPP_2_REF = "lulayer/pkg/baseapp/2.0-1.fc41.noarch"


def baseapp_2_file(tmp_path: Path) -> Path:
    """The built baseapp 2.0 RPM (fixtures/specs/overrides/), copied where the test may remove it."""
    rpms = build_spec_dir(fixture_build.SPECS / "overrides", "overrides-rpms")
    folder = tmp_path / "downloads"
    folder.mkdir(exist_ok=True)
    return Path(shutil.copy2(next(rpms.glob(f"{BASEAPP_2}.rpm")), folder / f"{BASEAPP_2}.rpm"))


def test_override_replace_with_a_local_rpm_is_kept_after_the_file_is_gone_and_reset(
        sysroot: Path, tmp_path: Path) -> None:
    """rpm-ostree's replace-local: the file's build takes the place of the base package of its name,
    stored in the repository, recorded as `[overrides] replace-local=SHA256:NEVRA`."""
    rpm_file = baseapp_2_file(tmp_path)

    out = lulayer(sysroot, "override", "replace", str(rpm_file)).stdout

    assert f"baseapp-1.0-1.fc41.noarch -> {BASEAPP_2}" in out and "override reset" in out
    new = pending(sysroot)
    assert chroot(new, "baseapp", check=True).stdout == "baseapp 2.0\n"
    assert rpm(new, "-q", "baseapp", check=True).stdout == f"{BASEAPP_2}\n"
    assert f"\n[overrides]\nreplace-local={metadata_sha256(rpm_file)}:{BASEAPP_2};\n" in origin_of(new)
    assert "baserefspec=" in origin_of(new) and "requested-local" not in origin_of(new)
    assert BASEAPP_2_REF in refs(sysroot)
    text = lulayer(sysroot, "status").stdout
    assert "LocalOverrides: baseapp 1.0-1.fc41 -> 2.0-1.fc41" in text
    assert "LayeredPackages" not in text and "LocalPackages" not in text
    d = deployment_json(sysroot)
    assert d["requested-base-local-replacements"] == [BASEAPP_2]
    assert d["base-local-replacements"] == [[[BASEAPP_2, "baseapp", 0, "2.0", "1.fc41", "noarch"],
                                             ["baseapp-1.0-1.fc41.noarch", "baseapp", 0, "1.0", "1.fc41", "noarch"]]]
    assert d["packages"] == [] and d["requested-local-packages"] == []

    rpm_file.unlink()
    lulayer(sysroot, "cleanup", "--repomd")  # the stored file and its ref stay while an origin needs them
    assert BASEAPP_2_REF in refs(sysroot)
    fixture_build.reboot(sysroot)
    assert chroot(booted(sysroot), "baseapp", check=True).stdout == "baseapp 2.0\n"
    lulayer(sysroot, "install", "htop")  # a later deployment composes the replacement again, from the repository
    assert rpm(pending(sysroot), "-q", "baseapp", "htop", check=True).stdout.startswith(f"{BASEAPP_2}\n")

    lulayer(sysroot, "override", "reset", "baseapp")

    back = pending(sysroot)
    assert rpm(back, "-q", "baseapp", check=True).stdout == "baseapp-1.0-1.fc41.noarch\n"
    assert chroot(back, "baseapp", check=True).stdout == "baseapp 1.0\n" and "htop" in rpm_names(back)
    assert "[overrides]" not in origin_of(back)
    assert deployment_json(sysroot)["requested-base-local-replacements"] == []
    ostree_fsck(sysroot)
    fixture_build.reboot(sysroot)
    lulayer(sysroot, "cleanup", "--rollback")  # no deployment needs it any more
    assert BASEAPP_2_REF not in refs(sysroot)


def test_override_replace_with_a_local_rpm_live_needs_allow_replacement(sysroot: Path, tmp_path: Path) -> None:
    rpm_file = baseapp_2_file(tmp_path)
    base = booted(sysroot)
    state = State(sysroot)

    proc = lulayer(sysroot, "override", "replace", str(rpm_file), "--live", check=False)

    one_error_line(proc, "removing or replacing base packages live", "--allow-replacement")
    state.assert_unchanged()

    lulayer(sysroot, "override", "replace", str(rpm_file), "--live", "--allow-replacement")

    assert chroot(base, "baseapp", check=True).stdout == "baseapp 2.0\n"
    assert rpm(base, "-q", "baseapp", check=True).stdout == f"{BASEAPP_2}\n"
    fixture_build.reboot(sysroot)
    assert rpm(booted(sysroot), "-q", "baseapp", check=True).stdout == f"{BASEAPP_2}\n"

    lulayer(sysroot, "override", "reset", "baseapp", "--live", "--allow-replacement")

    assert chroot(booted(sysroot), "baseapp", check=True).stdout == "baseapp 1.0\n"
    assert rpm(booted(sysroot), "-q", "baseapp", check=True).stdout == "baseapp-1.0-1.fc41.noarch\n"


def test_bad_local_replacement_is_refused_in_one_line_and_changes_nothing(sysroot: Path, tmp_path: Path) -> None:
    """Not a base package ('Package "X" not found', the words of rpm-ostree's override checks,
    src/daemon/rpmostreed-transaction-types.cxx), a layered one, and the files localpkg refuses."""
    lulayer(sysroot, "install", "htop")
    not_rpm = tmp_path / "notes.rpm"
    not_rpm.write_text("not a package\n")
    cases = [
        ((str(fixture_build.rpm_path("upgrademe", "1.0")),), ('Package "upgrademe" not found',)),
        ((str(fixture_build.rpm_path("htop")),), ("htop is a layered package", "lulayer uninstall htop")),
        ((str(tmp_path / "gone.rpm"),), ("gone.rpm: no such file",)),
        ((str(not_rpm),), ("notes.rpm is not an RPM file",)),
        ((str(baseapp_2_file(tmp_path)), "--from", f"repo={UPDATES}"), ("--from", "local RPM files")),
    ]
    state = State(sysroot)
    for args, needles in cases:
        one_error_line(lulayer(sysroot, "override", "replace", *args, check=False), *needles)
        state.assert_unchanged()
    assert BASEAPP_2_REF not in refs(sysroot)


def test_an_origin_replacing_with_a_file_the_repository_lacks_says_so_until_reset(sysroot: Path) -> None:
    """An rpm-ostree origin's replace-local entry whose file lulayer never stored: every change
    says which one, rather than dropping it; `override reset` by NEVRA is the way out."""
    origin = booted(sysroot).with_name(booted(sysroot).name + ".origin")
    entry = f"{'0' * 64}:{BASEAPP_2}"
    origin.write_text(origin.read_text() + f"\n[overrides]\nreplace-local={entry};\n")
    state = State(sysroot)

    one_error_line(lulayer(sysroot, "install", "htop", check=False), BASEAPP_2, "not in the OSTree repository")
    state.assert_unchanged()
    assert deployment_json(sysroot)["requested-base-local-replacements"] == [BASEAPP_2]

    lulayer(sysroot, "override", "reset", BASEAPP_2)

    assert "[overrides]" not in origin_of(pending(sysroot))
