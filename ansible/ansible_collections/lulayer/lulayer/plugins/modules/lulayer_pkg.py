#!/usr/bin/python
# Copyright (c) 2026, lulayer developers
# MIT License (see the LICENSE of the lulayer repository)

from __future__ import annotations

DOCUMENTATION = r"""
module: lulayer_pkg
short_description: Layer RPM packages onto an OSTree host with lulayer, for the next boot or live
version_added: "0.1.0"
description:
  - Makes layered RPM packages V(present), V(absent) or V(latest) on an OSTree-based host (Fedora Silverblue,
    CoreOS, bootc hosts) with C(lulayer), for the next boot and, with O(apply_live=true), on the running system at once.
  - The module runs C(lulayer ... --json) and reads its typed result. RV(ignore:changed) and RV(needs_reboot)
    come from that result, never from lulayer's English text, so a second identical run reports no change.
  - It never moves the base image. V(present) and V(absent) change only the named packages; V(latest) brings
    only the named packages to their newest versions. Other layered packages keep their versions and no OS
    update is pulled in as a side effect.
  - When another lulayer or rpm-ostree operation holds the sysroot lock, the module waits for it instead of failing.
requirements:
  - lulayer on the managed host's C(PATH).
attributes:
  check_mode:
    description: Runs lulayer with C(--dry-run); nothing is changed on the host.
    support: full
  diff_mode:
    description: Shows the requested packages and the package versions before and after.
    support: full
  platform:
    description: OSTree-based hosts, or any host with an OSTree folder sysroot given as O(sysroot).
    support: full
    platforms: posix
options:
  name:
    description:
      - Names of the packages to layer or remove.
      - An empty list is refused; lulayer removes every layered package only when told so by name.
    required: true
    type: list
    elements: str
    aliases: [pkg]
  state:
    description:
      - V(present) layers the packages that are not requested yet; requested ones keep their versions.
      - V(absent) removes the packages from the layered set; packages that are not layered are left alone.
      - V(latest) layers missing packages and upgrades the named ones to the newest versions their repositories
        have, without changing the base image or other layered packages.
      - A package the base image already provides is recorded as an inactive request, as rpm-ostree does
        with C(--allow-inactive); it becomes active when a base image without it is deployed.
    type: str
    choices: [absent, latest, present]
    default: present
  apply_live:
    description:
      - Also apply the change to the running system, without a reboot (C(lulayer --live)).
      - Works for every O(state). With O(state=latest), replacing the files of upgraded packages live is allowed.
    type: bool
    default: false
  sysroot:
    description:
      - Work on the OSTree folder sysroot at this path instead of the running system (C(lulayer --sysroot)).
    type: path
notes:
  - RV(needs_reboot) is true exactly when the deployment that boots next holds something the running system
    does not, whether this task or an earlier one put it there (unlike community.general.rpm_ostree_pkg, see its
    issue 10009).
seealso:
  - module: community.general.rpm_ostree_pkg
author:
  - lulayer developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Layer htop for the next boot
  lulayer.lulayer.lulayer_pkg:
    name: htop
    state: present

- name: Layer htop and use it at once
  lulayer.lulayer.lulayer_pkg:
    name: [htop, strace]
    apply_live: true

- name: Remove htop, also from the running system
  lulayer.lulayer.lulayer_pkg:
    name: htop
    state: absent
    apply_live: true

- name: Keep upgrademe at its newest version, without an OS update
  lulayer.lulayer.lulayer_pkg:
    name: upgrademe
    state: latest
  register: upgrade

- name: Reboot when something waits for the next boot
  ansible.builtin.reboot:
  when: upgrade.needs_reboot
"""

RETURN = r"""
needs_reboot:
  description: Whether the deployment that boots next holds something the running system does not.
  returned: success
  type: bool
  sample: true
packages:
  description: The package names the task was given.
  returned: always
  type: list
  elements: str
  sample: [htop]
action:
  description: The lulayer command run.
  returned: always
  type: str
  sample: install
cmd:
  description: The full command line run.
  returned: always
  type: str
  sample: lulayer install --idempotent --allow-inactive --json -- htop
requested:
  description: The layered package requests after the task (before it, in check mode what they would be).
  returned: success
  type: list
  elements: str
  sample: [htop]
changes:
  description: The package changes of the next boot's deployment, as full NEVRAs.
  returned: success
  type: dict
  contains:
    added:
      description: Packages added.
      type: list
      elements: str
    removed:
      description: Packages removed.
      type: list
      elements: str
    upgraded:
      description: Packages replaced, each as a pair of the old and the new NEVRA.
      type: list
      elements: list
  sample: {"added": ["htop-3.3.0-1.fc41.x86_64"], "removed": [], "upgraded": []}
live:
  description: What was applied to the running system, when O(apply_live=true).
  returned: when O(apply_live=true) and not in check mode
  type: dict
  sample: {"changed": true, "files": {"added": 3, "changed": 0, "removed": 0}}
result:
  description: lulayer's whole JSON result.
  returned: success
  type: dict
"""

import json

from ansible.module_utils.basic import AnsibleModule


def _command(module, names):
    params = module.params
    cmd = [module.get_bin_path("lulayer", required=True)]
    if params["sysroot"]:
        cmd += ["--sysroot", params["sysroot"]]
    state = params["state"]
    if state == "absent":
        action = "uninstall"
        cmd += [action, "--idempotent"]
    else:
        action = "install"
        cmd += [action, "--allow-inactive"]
        cmd.append("--latest" if state == "latest" else "--idempotent")
    if params["apply_live"]:
        cmd.append("--live")
        if state == "latest":
            cmd.append("--allow-replacement")
    if module.check_mode:
        cmd.append("--dry-run")
    cmd += ["--json", "--", *names]
    return action, cmd


def _diff(result):
    changes = result.get("changes", {})
    before = ["requested: " + " ".join(result.get("previous-requested-packages", []))]
    after = ["requested: " + " ".join(result.get("requested-packages", []))]
    before += sorted(changes.get("removed", []) + [old for old, dummy in changes.get("upgraded", [])])
    after += sorted(changes.get("added", []) + [new for dummy, new in changes.get("upgraded", [])])
    return {
        "before_header": "layered packages",
        "after_header": "layered packages",
        "before": "\n".join(before) + "\n",
        "after": "\n".join(after) + "\n",
    }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="list", elements="str", required=True, aliases=["pkg"]),
            state=dict(type="str", default="present", choices=["absent", "latest", "present"]),
            apply_live=dict(type="bool", default=False),
            sysroot=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    module.run_command_environ_update = {"LANGUAGE": "C", "LC_ALL": "C"}
    names = [n.strip() for n in module.params["name"] if n and n.strip()]
    if not names:
        module.fail_json(msg="name lists no package; lulayer_pkg changes only the packages it is given by name",
                         packages=[])
    action, cmd = _command(module, names)
    common = dict(packages=names, action=action, cmd=" ".join(cmd))

    # lulayer waits for the sysroot lock itself (and says so on stderr): no retry loop here.
    rc, out, err = module.run_command(cmd)
    if rc != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        module.fail_json(msg=lines[-1] if lines else f"lulayer exited {rc}", rc=rc, stdout=out, stderr=err,
                         **common)
    try:
        result = json.loads(out)
    except ValueError as e:
        module.fail_json(msg=f"lulayer printed no JSON result: {e}", rc=rc, stdout=out, stderr=err, **common)

    returned = dict(
        changed=bool(result["changed"]),
        needs_reboot=bool(result["needs-reboot"]),
        requested=result.get("requested-packages", []),
        changes=result.get("changes", {}),
        result=result,
        rc=rc,
        stdout=out,
        stderr=err,
        **common,
    )
    if "live" in result:
        returned["live"] = result["live"]
    if module._diff:
        returned["diff"] = _diff(result)
    module.exit_json(**returned)


if __name__ == "__main__":
    main()
