"""lulayer on a real booted OSTree host: a Debian 12 OSTree VM under qemu, no --sysroot.

Run with ``./dev test -m vm`` (the default run deselects them). Each test boots its
own qcow2 overlay of the cached image (tests/vm/image.py) and runs shell steps
inside through the image's driver service (tests/vm/runner.py). No qemu, no image:
the test fails with the reason; it never skips. The host is today's (HostConfig.TODAY:
a container-image origin, a read-only /sysroot) unless a test says otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures import build as fx
from tests.vm.image import HostConfig
from tests.vm.runner import VM, Boot

# Not marked `root`: that marker skips when not root, and these must fail instead
# (the image build says that it needs root).
pytestmark = [pytest.mark.vm]


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VM]:
    machine = VM(tmp_path / "vm")
    yield machine
    machine.disk.unlink(missing_ok=True)  # the overlay; serial logs and outputs stay in tmp_path


def _booted(boot: Boot, step: str) -> dict[str, object]:
    deps = json.loads(boot.ok(step))["deployments"]
    booted = [d for d in deps if d["booted"]]
    assert len(booted) == 1, f"boot {boot.number}: booted deployments {booted} in {deps}"
    result: dict[str, object] = booted[0]
    return result


def _deployments(boot: Boot, step: str) -> list[dict[str, object]]:
    deps: list[dict[str, object]] = json.loads(boot.ok(step))["deployments"]
    return deps


# /sysroot as PID 1's mount namespace has it: what every process but lulayer's own sees.
SYSROOT_RO_STEP = "step {name} nsenter -t 1 -m findmnt -n -o OPTIONS /sysroot\n"


def _sysroot_ro(boot: Boot, step: str) -> None:
    """Step step (SYSROOT_RO_STEP) found /sysroot read-only in PID 1's mount namespace."""
    options = boot.ok(step).strip()
    assert options.split(",")[0] == "ro", f"boot {boot.number}: /sysroot in PID 1's namespace: {options}"


def test_status_finds_the_booted_deployment_through_libostree(vm: VM) -> None:
    """On today's host: a container-image origin and a read-only /sysroot."""
    b = vm.boot("""
step ostree-booted test -e /run/ostree-booted
step no-marker test ! -e /run/lulayer/booted
step pid1 cat /proc/1/comm
step ostree-status ostree admin status
step findmnt sh -c 'findmnt /sysroot; findmnt /usr; findmnt /'
step origin sh -c 'cat /sysroot/ostree/deploy/debian/deploy/*.origin'
step repo-config cat /sysroot/ostree/repo/config
step sysroot-touch touch /sysroot/x
step status lulayer status
step json lulayer status --json
step usr-ro touch /usr/x
""" + SYSROOT_RO_STEP.format(name="sysroot-ro"))
    b.ok("ostree-booted")
    b.ok("no-marker")
    assert b.ok("pid1").strip() == "systemd"
    b.failed("usr-ro")
    assert "Read-only file system" in b.failed("sysroot-touch")
    _sysroot_ro(b, "sysroot-ro")
    assert f"container-image-reference={fx.IMAGE_REFERENCE}" in b.ok("origin"), b.ok("origin")
    booted = _booted(b, "json")
    assert booted["osname"] == "debian"
    assert booted["container-image-reference"] == fx.IMAGE_REFERENCE, booted
    assert f"* debian {booted['checksum']}.{booted['serial']}" in b.ok("ostree-status")
    status = b.ok("status")
    assert f"● {fx.IMAGE_REFERENCE} (booted)" in status, status
    assert "Digest: sha256:" in status, status
    assert str(booted["checksum"]) in status


def test_install_live_htop_runs_at_once(vm: VM) -> None:
    b = vm.boot("""
step before sh -c 'command -v htop'
step install lulayer install htop --live
step which sh -c 'command -v htop'
step htop htop --version
step rpm-q rpm -q htop
step rpm-q-dbpath rpm --dbpath /usr/share/rpm -q htop ncurses-libs
step touch-usr sh -c 'touch /usr/x'
step mount sh -c 'findmnt -n -o FSTYPE,OPTIONS /usr | tail -n 1'
step same-ns sh -c 'test "$(readlink /proc/1/ns/mnt)" = "$(readlink /proc/self/ns/mnt)"'
step pid1-sees sh -c 'grep " /usr .*lulayer-live/upper" /proc/1/mountinfo'
step hook systemctl is-active lulayer-finalize.service
""" + SYSROOT_RO_STEP.format(name="sysroot-ro-install") + """
step no-bind sh -c 'nsenter -t 1 -m findmnt -rn -o TARGET | grep lulayer-live'
step settle lulayer finalize
step status lulayer status
step json lulayer status --json
""" + SYSROOT_RO_STEP.format(name="sysroot-ro-settle"))
    b.failed("before")
    out = b.ok("install")
    assert "Live added: htop-3.3.0-1.fc41.x86_64" in out, out
    assert b.ok("which").strip() == "/usr/bin/htop"
    assert "htop 3.3.0" in b.ok("htop")
    assert b.ok("rpm-q").strip() == "htop-3.3.0-1.fc41.x86_64"
    assert "ncurses-libs-6.4-1.fc41.x86_64" in b.ok("rpm-q-dbpath")
    assert "Read-only file system" in b.failed("touch-usr")
    assert b.ok("mount").startswith("overlay ro"), b.ok("mount")
    b.ok("same-ns")  # the steps look from the host's mount namespace (lulayer writes from its own), and
    # PID 1 sees the overlay
    b.ok("pid1-sees")
    # /sysroot stayed read-only for everyone else; the upper layer's writable bind mount is gone.
    _sysroot_ro(b, "sysroot-ro-install")
    b.failed("no-bind")
    assert b.ok("hook").strip() == "active"  # the shutdown hook for the staged deployment is armed
    b.ok("settle")  # waits for the detached writer
    _sysroot_ro(b, "sysroot-ro-settle")
    status = b.ok("status")
    assert "(pending)" in status and "LayeredPackages: htop" in status, status
    assert "LiveDiff: 2 added" in status, status
    assert "+ htop-3.3.0-1.fc41.x86_64" in status, status
    deps = _deployments(b, "json")
    assert len(deps) == 2 and deps[0]["lulayer-pending"] and deps[1]["booted"], deps
    assert deps[1]["live-replaced"] == deps[0]["checksum"], deps


UNIT_SCRIPT = """
step before systemctl cat hello.service
step install lulayer install hello-service --live
step cat systemctl cat hello.service
step start systemctl start hello.service
step active systemctl is-active hello.service
step journal journalctl -b -u hello.service --no-pager
"""
# typechange 1.0 live, then its 2.0 from a repository in the boot's share, which turns paths
# of /usr/share/typechange into other types (see fixtures/specs/typechange-2.spec).
TYPECHANGE_SCRIPT = """
TC=/usr/share/typechange
step tc-install lulayer install typechange --live
step tc-v1 typechange
step tc-repo sed -i 's|^baseurl=.*|baseurl=file:///run/lulayer-vm/share/typechange-repo|' \
    /etc/yum.repos.d/lulayer-fixtures.repo
step tc-upgrade lulayer upgrade --live --allow-replacement
step tc-v2 typechange
step tc-rpm-q rpm -q typechange
step tc-kinds sh -c "cd $TC && stat -c '%n %F' file-to-dir dir-to-file dir-to-symlink symlink-to-dir \
    symlink-to-file file-to-symlink"
step tc-settle lulayer finalize
step tc-json lulayer status --json
step tc-compare python3 /run/lulayer-vm/share/tc-compare.py
step tc-temp find /usr -name ".*.tmp"
step tc-ro touch /usr/share/typechange/x
"""

# svcuser live: its sysusers.d user and tmpfiles.d folder made at once, its service (User=svcuser)
# started without a reboot; the next boot's deployment, written after, has the same user.
SVCUSER_SCRIPT = """
step su-before id svcuser
step su-install lulayer install svcuser --live
step su-id id -u svcuser
step su-dir stat -c '%U %G %a' /var/lib/svcuser
step su-start systemctl start svcuser.service
step su-whoami sh -c 'for i in $(seq 100); do test -s /var/lib/svcuser/whoami && break; sleep 0.2; done; \
    cat /var/lib/svcuser/whoami'
step su-active systemctl is-active svcuser.service
step su-ps sh -c 'ps -o user= -p "$(systemctl show -p MainPID --value svcuser.service)"'
step su-settle lulayer finalize
step su-next python3 /run/lulayer-vm/share/su-next.py
"""

# In the guest: svcuser's lines in the live /etc and in the /etc of the deployment that boots next.
SVCUSER_NEXT = r"""
import json, subprocess
d = json.loads(subprocess.run(["lulayer", "status", "--json"], capture_output=True, check=True,
                              text=True).stdout)["deployments"][0]
for etc in ("/etc", f"/ostree/deploy/debian/deploy/{d['checksum']}.{d['serial']}/etc"):
    print(next(line for line in open(f"{etc}/passwd") if line.startswith("svcuser:")), end="")
"""


# In the guest: typechange's live trees against those of the next boot's deployment, which
# holds the target commit: type, mode, owner, content, symlink target, xattrs.
TYPECHANGE_COMPARE = r"""
import json, os, subprocess, sys
d = json.loads(subprocess.run(["lulayer", "status", "--json"], capture_output=True, check=True,
                              text=True).stdout)["deployments"][0]
def entries(root):
    out = {}
    for sub in ("usr/share/typechange", "usr/lib/typechange"):
        for top, dirs, files in os.walk(os.path.join(root, sub)):
            for p in [top, *(os.path.join(top, n) for n in dirs + files)]:
                st = os.lstat(p)
                if os.path.islink(p):
                    content = os.readlink(p)
                elif os.path.isfile(p):
                    content = open(p, "rb").read()
                else:
                    content = None
                xattrs = sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                for k in os.listxattr(p, follow_symlinks=False) if not k.startswith("trusted."))
                out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, content, xattrs)
    return out
live, target = entries("/"), entries(f"/ostree/deploy/debian/deploy/{d['checksum']}.{d['serial']}")
bad = sorted(p for p in live.keys() | target.keys() if live.get(p) != target.get(p))
print(f"{len(live)} entries compared; differing: {bad}")
sys.exit(1 if bad or not live else 0)
"""


@pytest.fixture(scope="module")
def unit_and_typechange_boot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boot]:
    """One boot shared by three tests (each boot costs minutes under TCG): a systemd unit
    installed live, then a type-changing upgrade applied live, then a service running as its own
    user installed live."""
    machine = VM(tmp_path_factory.mktemp("vm-unit-typechange") / "vm")
    fx.make_repo(machine.share / "typechange-repo",
                 [*fx.default_repo_packages(), fx.rpm_path("typechange", "2.0")])
    (machine.share / "tc-compare.py").write_text(TYPECHANGE_COMPARE)
    (machine.share / "su-next.py").write_text(SVCUSER_NEXT)
    yield machine.boot(UNIT_SCRIPT + TYPECHANGE_SCRIPT + SVCUSER_SCRIPT)
    machine.disk.unlink(missing_ok=True)


def test_install_live_systemd_unit_is_loaded_at_once(unit_and_typechange_boot: Boot) -> None:
    b = unit_and_typechange_boot
    b.failed("before")
    out = b.ok("install")
    assert "Live added: hello-service-1.0-1.fc41.noarch" in out, out
    assert "hello.service" in out.split("Units changed", 1)[-1], out
    assert "ExecStart=/usr/bin/hello-daemon" in b.ok("cat")
    b.ok("start")
    assert b.ok("active").strip() == "active"
    assert "hello-daemon 1.0 started" in b.ok("journal")


def test_upgrade_live_changes_the_type_of_paths_on_the_booted_host(unit_and_typechange_boot: Boot) -> None:
    b = unit_and_typechange_boot
    b.ok("tc-install")
    assert b.ok("tc-v1").strip() == "typechange 1.0"
    b.ok("tc-repo")
    out = b.ok("tc-upgrade")
    assert "Live replaced: typechange-1.0-1.fc41.noarch -> typechange-2.0-1.fc41.noarch" in out, out
    assert b.ok("tc-v2").strip() == "typechange 2.0"
    assert b.ok("tc-rpm-q").strip() == "typechange-2.0-1.fc41.noarch"
    assert b.ok("tc-kinds").splitlines() == [
        "file-to-dir directory", "dir-to-file regular file", "dir-to-symlink symbolic link",
        "symlink-to-dir directory", "symlink-to-file regular file", "file-to-symlink symbolic link"]
    b.ok("tc-settle")
    deps = _deployments(b, "tc-json")
    booted = next(d for d in deps if d["booted"])
    assert "live-inprogress" not in booted and booted["live-replaced"] == deps[0]["checksum"], deps
    assert "differing: []" in b.ok("tc-compare")
    assert b.ok("tc-temp").strip() == ""
    assert "Read-only file system" in b.failed("tc-ro")


def test_install_live_service_runs_as_its_own_user_without_a_reboot(unit_and_typechange_boot: Boot) -> None:
    b = unit_and_typechange_boot
    b.failed("su-before")
    out = b.ok("su-install")
    assert "Live added: svcuser-1.0-1.fc41.noarch" in out, out
    assert "Created: user svcuser" in out, out
    uid = b.ok("su-id").strip()
    assert uid.isdigit() and uid != "0", uid
    assert b.ok("su-dir").strip() == "svcuser svcuser 750"
    b.ok("su-start")
    assert b.ok("su-whoami").strip() == "svcuser"
    assert b.ok("su-active").strip() == "active"
    assert b.ok("su-ps").strip() == "svcuser"
    b.ok("su-settle")
    live, next_boot = b.ok("su-next").splitlines()
    assert live == next_boot  # the same uid, gid and home


def test_uninstall_live_removes_at_once_and_from_the_next_boot_its_etc_files_too(vm: VM) -> None:
    # htop: installed and uninstalled live in one boot. cfgpkg (a %config file in /etc, and a
    # file its %post writes there): installed live, a reboot, uninstalled live, a reboot; the
    # /etc files the live install added go with the package, as without --live (issue 19).
    b1 = vm.boot("""
step install lulayer install htop --live
step htop htop --version
step uninstall lulayer uninstall htop --live
step which sh -c 'command -v htop'
step rpm-q rpm -q htop
step status lulayer status
step cfg-install lulayer install cfgpkg --live
step cfg-etc cat /etc/cfgpkg.conf /etc/cfgpkg-post.conf
step cfg-status lulayer status -v
""" + SYSROOT_RO_STEP.format(name="sysroot-ro"))
    assert "htop 3.3.0" in b1.ok("htop")
    _sysroot_ro(b1, "sysroot-ro")
    assert "Live removed: htop-3.3.0-1.fc41.x86_64" in b1.ok("uninstall")
    b1.failed("which")
    assert "not installed" in b1.failed("rpm-q")
    # What boots next, staged or written already, layers nothing; the htop deployment is superseded or gone.
    first = b1.ok("status").split("\n\n")[0]
    assert "(pending" in first and "LayeredPackages" not in first, b1.ok("status")
    assert b1.ok("cfg-etc").split() == ["setting=1.0", "post=1.0"]
    assert "LiveEtcAdded: /etc/cfgpkg-post.conf /etc/cfgpkg.conf" in b1.ok("cfg-status"), b1.ok("cfg-status")
    b2 = vm.boot("""
step which sh -c 'command -v htop'
step rpm-q rpm -q htop
step json lulayer status --json
step cfg-etc cat /etc/cfgpkg.conf /etc/cfgpkg-post.conf
step cfg-verify rpm -V --nomtime cfgpkg
step cfg-uninstall lulayer uninstall cfgpkg --live
step cfg-settle lulayer finalize
""")
    b2.failed("which")
    b2.failed("rpm-q")
    assert _booted(b2, "json")["requested-packages"] == ["cfgpkg"]
    assert b2.ok("cfg-etc").split() == ["setting=1.0", "post=1.0"]
    assert b2.ok("cfg-verify").strip() == ""
    assert "Live removed: cfgpkg-1.0-1.fc41.noarch" in b2.ok("cfg-uninstall")
    b3 = vm.boot("""
step json lulayer status --json
step cfg-etc sh -c 'ls /etc/cfgpkg.conf /etc/cfgpkg-post.conf'
step backing sh -c 'ls /sysroot/ostree/deploy/*/backing/'
""")
    assert _booted(b3, "json")["requested-packages"] == []
    b3.failed("cfg-etc")
    print("backing folders:", b3.step("backing"))


def test_reboot_boots_the_new_deployment_and_rollback_returns(vm: VM) -> None:
    b1 = vm.boot("""
step base lulayer status --json
step install lulayer install htop hello-service --live
step settle lulayer finalize
step json lulayer status --json
""")
    base = _booted(b1, "base")
    pending = _deployments(b1, "json")[0]
    assert pending["lulayer-pending"] and pending["requested-packages"] == ["hello-service", "htop"], pending

    b2 = vm.boot("""
step json lulayer status --json
step status lulayer status
step htop htop --version
step rpm-q rpm -q htop hello-service
step mount findmnt -n -o FSTYPE /usr
step live-state sh -c 'ls /run/ostree/deployment-state/*/lulayer-live.json'
step ostree-status ostree admin status
step rollback lulayer rollback
step after lulayer status --json
""" + SYSROOT_RO_STEP.format(name="sysroot-ro"))
    booted = _booted(b2, "json")
    assert booted["checksum"] == pending["checksum"], (booted, pending)
    # The second boot read the loader entries lulayer's deploy wrote, not the first boot's.
    assert b1.entry is not None and b2.entry is not None and b2.entry.options != b1.entry.options
    assert booted["requested-packages"] == ["hello-service", "htop"]
    assert "live-replaced" not in booted and "live-inprogress" not in booted, booted
    status = b2.ok("status")
    assert "LiveCommit" not in status and "Pending diff" not in status and "(pending)" not in status, status
    assert "htop 3.3.0" in b2.ok("htop")
    b2.ok("rpm-q")
    assert b2.ok("mount").split() == ["ext4"], b2.ok("mount")
    b2.failed("live-state")
    b2.ok("rollback")
    _sysroot_ro(b2, "sysroot-ro")
    after = _deployments(b2, "after")
    assert after[0]["checksum"] == base["checksum"] and not after[0]["booted"], after

    b3 = vm.boot("""
step json lulayer status --json
step which sh -c 'command -v htop'
step rpm-q rpm -q htop
""")
    assert _booted(b3, "json")["checksum"] == base["checksum"]
    b3.failed("which")
    b3.failed("rpm-q")


# In the same boot: `systemctl stop` of a transient unit running `install --live`, SIGTERM as
# systemd sends it (then SIGCONT). The command stops itself half way through the files
# (SIGSTOP at the fault point), so the stop lands mid-apply.
SIGTERM_SCRIPT = """
step sig-run systemd-run --unit=lulayer-sigterm -p Environment=LULAYER_TEST_FAULT=files-half \
    -p Environment=LULAYER_TEST_FAULT_SIGNAL=STOP "$(command -v lulayer)" install hello-config --live
step sig-paused sh -c 'for i in $(seq 1200); do
    pid=$(systemctl show -P MainPID lulayer-sigterm)
    [ "$pid" != 0 ] && [ "$(cut -d" " -f3 /proc/$pid/stat)" = T ] && exit 0; sleep 0.1; done; exit 1'
step sig-stop systemctl stop lulayer-sigterm
step sig-exit systemctl show -P ExecMainStatus lulayer-sigterm
step sig-journal journalctl -u lulayer-sigterm -o cat --no-pager
step sig-status lulayer status
step sig-recover lulayer apply-live
step sig-hello hello-config
step sig-rpm-q rpm -q hello-config
step sig-temp find /usr -name ".*.tmp"
step sig-json lulayer status --json
"""


def test_live_install_killed_mid_apply_then_apply_live_recovers(vm: VM) -> None:
    b = vm.boot("""
step killed env LULAYER_TEST_FAULT=files-half lulayer install htop --live
step status-killed lulayer status
step recover lulayer apply-live
step htop htop --version
step rpm-q rpm -q htop
step touch-usr sh -c 'touch /usr/x'
step status lulayer status
step json lulayer status --json
""" + SYSROOT_RO_STEP.format(name="sysroot-ro") + SIGTERM_SCRIPT)
    rc, out = b.step("killed")
    assert rc == 137, f"expected SIGKILL (137), got {rc}: {out}"
    assert "InterruptedLiveCommit" in b.ok("status-killed")
    b.ok("recover")
    assert "htop 3.3.0" in b.ok("htop")
    assert b.ok("rpm-q").strip() == "htop-3.3.0-1.fc41.x86_64"
    b.failed("touch-usr")
    assert "InterruptedLiveCommit" not in b.ok("status")
    _sysroot_ro(b, "sysroot-ro")
    deps = _deployments(b, "json")
    booted = next(d for d in deps if d["booted"])
    assert "live-inprogress" not in booted and booted["live-replaced"] == deps[0]["checksum"], deps

    _sigterm_by_systemctl_stop_is_reported_and_recovered(b)


def _sigterm_by_systemctl_stop_is_reported_and_recovered(b: Boot) -> None:
    b.ok("sig-run")
    b.ok("sig-paused")
    b.ok("sig-stop")
    assert b.ok("sig-exit").strip() == "143", b.describe()
    journal = b.ok("sig-journal")
    said = [line for line in journal.splitlines() if line.startswith(("interrupted: ", "error: ", "Traceback"))]
    assert said == [
        "interrupted: the live update is in progress (status: InterruptedLiveCommit); the next lulayer "
        "command (or `lulayer apply-live --reset`) finishes it"], journal
    assert "InterruptedLiveCommit" in b.ok("sig-status")
    b.ok("sig-recover")
    b.ok("sig-hello")
    assert b.ok("sig-rpm-q").strip() == "hello-config-1.0-1.fc41.noarch"
    assert b.ok("sig-temp").strip() == ""
    deps = _deployments(b, "sig-json")
    booted = next(d for d in deps if d["booted"])
    assert "live-inprogress" not in booted and booted["live-replaced"] == deps[0]["checksum"], deps


def test_staged_deployment_left_by_a_killed_writer_is_written_at_shutdown(vm: VM) -> None:
    b1 = vm.boot("""
step install env LULAYER_TEST_FAULT=staged-write lulayer install htop --live
step htop htop --version
step hook systemctl is-active lulayer-finalize.service
step status lulayer status
step json lulayer status --json
""")
    assert "being written in the background" in b1.ok("install")
    assert "htop 3.3.0" in b1.ok("htop")
    assert b1.ok("hook").strip() == "active"
    assert "staged: not written yet" in b1.ok("status"), b1.ok("status")
    staged = _deployments(b1, "json")[0]
    assert staged["staged"] and staged["requested-packages"] == ["htop"], staged
    assert not staged["lulayer-being-written"], staged
    assert len(_deployments(b1, "json")) == 2  # the staged one, not yet deployed, and the booted one
    b2 = vm.boot("""
step json lulayer status --json
step htop htop --version
""")
    booted = _booted(b2, "json")
    assert booted["checksum"] == staged["checksum"] and booted["requested-packages"] == ["htop"], booted
    assert "htop 3.3.0" in b2.ok("htop")
    assert not any(d["staged"] for d in _deployments(b2, "json"))


def test_ansible_module_layers_htop_live_on_the_booted_host(vm: VM) -> None:
    """lulayer.lulayer.lulayer_pkg from the checkout, run by the guest's own ansible-core (Debian's)
    against the running host: no --sysroot, the real /sysroot and a live /usr."""
    b = vm.boot("""
export ANSIBLE_COLLECTIONS_PATH=/run/lulayer-vm/project/ansible ANSIBLE_NOCOLOR=1
cat > /tmp/play.yml <<'PLAY'
- hosts: localhost
  gather_facts: false
  tasks:
    - name: htop, now and for the next boot
      lulayer.lulayer.lulayer_pkg:
        name: htop
        apply_live: true
      register: first
    - name: the same again
      lulayer.lulayer.lulayer_pkg:
        name: htop
        apply_live: true
      register: again
    - name: write the results out
      ansible.builtin.copy:
        content: "{{ {'first': first, 'again': again} | to_json }}"
        dest: /tmp/results.json
PLAY
step version ansible-playbook --version
step play ansible-playbook -i localhost, -c local /tmp/play.yml
step results cat /tmp/results.json
step htop htop --version
step settle lulayer finalize
step json lulayer status --json
""")
    assert "core 2." in b.ok("version"), b.ok("version")
    b.ok("play")
    results = json.loads(b.ok("results"))
    first, again = results["first"], results["again"]
    assert first["changed"] is True and first["needs_reboot"] is False, first
    assert "htop-3.3.0-1.fc41.x86_64" in first["changes"]["added"], first
    assert again["changed"] is False and again["needs_reboot"] is False, again
    assert "htop 3.3.0" in b.ok("htop")
    deps = _deployments(b, "json")
    assert deps[0]["requested-packages"] == ["htop"] and not deps[0]["booted"], deps
    booted = next(d for d in deps if d["booted"])
    assert booted["live-replaced"] == deps[0]["checksum"], booted


def test_legacy_host_install_live_then_reboot_into_it(tmp_path: Path) -> None:
    """The host of a few years ago: a refspec origin and a read-write /sysroot."""
    vm = VM(tmp_path / "vm", config=HostConfig.LEGACY)
    b1 = vm.boot("""
step origin sh -c 'cat /sysroot/ostree/deploy/debian/deploy/*.origin'
step sysroot findmnt -n -o OPTIONS /sysroot
step install lulayer install htop --live
step htop htop --version
step settle lulayer finalize
step status lulayer status
step json lulayer status --json
step sysroot-after nsenter -t 1 -m findmnt -n -o OPTIONS /sysroot
""")
    assert f"refspec={HostConfig.LEGACY.origin_line}" in b1.ok("origin"), b1.ok("origin")
    assert b1.ok("sysroot").startswith("rw,"), b1.ok("sysroot")
    assert "Live added: htop-3.3.0-1.fc41.x86_64" in b1.ok("install")
    assert "htop 3.3.0" in b1.ok("htop")
    assert f"● {HostConfig.LEGACY.origin_line} (booted)" in b1.ok("status"), b1.ok("status")
    assert b1.ok("sysroot-after").startswith("rw,"), b1.ok("sysroot-after")
    pending = _deployments(b1, "json")[0]
    assert pending["requested-packages"] == ["htop"] and not pending["booted"], pending
    b2 = vm.boot("""
step json lulayer status --json
step htop htop --version
step rpm-q rpm -q htop
""")
    booted = _booted(b2, "json")
    assert booted["checksum"] == pending["checksum"] and booted["origin"] == HostConfig.LEGACY.origin_line, booted
    assert "htop 3.3.0" in b2.ok("htop")
    assert b2.ok("rpm-q").strip() == "htop-3.3.0-1.fc41.x86_64"
    vm.disk.unlink(missing_ok=True)
