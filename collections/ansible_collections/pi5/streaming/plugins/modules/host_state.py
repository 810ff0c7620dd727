#!/usr/bin/python
"""Read what a role needs to know about the host in one round trip: packages, services, paths, users, files."""
from __future__ import annotations

DOCUMENTATION = r"""
module: host_state
short_description: Read packages, services, paths, users and small files of a host in one call
description:
  - A role asks once for everything its idempotence checks need, and skips the tasks whose state already holds
    (a package installed, a service running and enabled, a directory with the right owner). On a warm run that
    replaces one round trip per check with one per role; the tasks still run, and correct drift, whenever the state
    differs.
  - Reads only. Packages come from dpkg's status file, services from one C(systemctl show), users from the password
    and group databases.
options:
  packages:
    description: Debian packages to look up.
    type: list
    elements: str
    default: []
  services:
    description: systemd units to look up (a name without a suffix is a C(.service)).
    type: list
    elements: str
    default: []
  paths:
    description: Paths to C(lstat) (links are not followed).
    type: list
    elements: path
    default: []
  users:
    description: Users to look up, with the groups they belong to.
    type: list
    elements: str
    default: []
  read:
    description: Small text files to return whole (at most 64 KiB each; each NUL of a device-tree string list ends a line).
    type: list
    elements: path
    default: []
  system:
    description:
      - Also return the time zone, the generated locales, the system C(LANG), the kernel's page size and, on a
        Raspberry Pi, the throttling flags (C(vcgencmd get_throttled)).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads only, in check mode too.
author: pi5-streaming maintainers
"""

EXAMPLES = r"""
- name: Read what the nginx role needs to know about the Pi, in one round trip
  pi5.streaming.host_state:
    packages: [nginx, curl]
    services: [nginx]
    paths: [/etc/nginx/sites-enabled/default]
  register: nginx_host

- name: Install nginx and curl
  ansible.builtin.apt:
    name: [nginx, curl]
  when: nginx_host.packages_missing | length > 0
"""

RETURN = r"""
packages:
  description: Installed version of each asked-for package that is installed.
  type: dict
  returned: always
  sample: {nginx: 1.22.1-9+deb12u1}
packages_missing:
  description: Asked-for packages that are not installed.
  type: list
  elements: str
  returned: always
services:
  description: For each asked-for unit, whether it is known, active and enabled.
  type: dict
  returned: always
  sample: {nginx: {exists: true, active: true, enabled: true}}
services_down:
  description: Asked-for units that are not both active and enabled.
  type: list
  elements: str
  returned: always
paths:
  description:
    - For each path, whether it exists, its type (file, directory, link, other), mode, owner, size, link target and,
      for a regular file of at most 64 MiB, the sha256 of its content (the C(pi5.streaming.holds) test compares it).
  type: dict
  returned: always
  sample: {/etc/nginx/pi5-tls: {exists: true, type: directory, mode: "0700", uid: 0, gid: 0, size: 4096, target: null, sha256: null}}
users:
  description: For each user, whether it exists, its uid, primary gid, home and groups (primary and supplementary).
  type: dict
  returned: always
read:
  description: Content of each file of O(read), or null when it cannot be read.
  type: dict
  returned: always
system:
  description:
    - C(timezone), C(locales) (as C(locale -a) names them), C(lang), C(page_size) and C(throttled) (the hex value
      C(vcgencmd get_throttled) prints, null without vcgencmd), when O(system) is true.
  type: dict
  returned: when O(system) is true
"""

import contextlib
import grp
import os
import pwd
import shutil
import stat
import subprocess
from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pi5.streaming.plugins.module_utils.checksum import sha256_of

DPKG_STATUS = "/var/lib/dpkg/status"
READ_LIMIT = 65536
HASH_LIMIT = 64 << 20  # config files, scripts, a build context; a larger file is not hashed
FILE_TYPES = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "link"))


def installed_packages(names: list[str], status_file: str = DPKG_STATUS) -> dict[str, str]:
    """Version of each of names that dpkg's status file lists as installed."""
    wanted, found = set(names), {}
    try:
        with open(status_file, encoding="utf-8", errors="replace") as handle:
            stanzas = handle.read().split("\n\n")
    except OSError:
        return {}
    for stanza in stanzas:
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
        if fields.get("Package") in wanted and fields.get("Status", "").endswith(" installed"):
            found[fields["Package"]] = fields.get("Version", "")
    return found


def unit_name(name: str) -> str:
    return name if "." in name else f"{name}.service"


def service_states(names: list[str]) -> dict[str, dict[str, bool]]:
    """Known, active and enabled, for each unit, from one `systemctl show`."""
    states = {name: {"exists": False, "active": False, "enabled": False} for name in names}
    systemctl = shutil.which("systemctl")
    if not names or systemctl is None:
        return states
    run = subprocess.run([systemctl, "show", "--property=Id,LoadState,ActiveState,UnitFileState", "--",
                          *map(unit_name, names)], capture_output=True, text=True, check=False)
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line) for block in run.stdout.split("\n\n")]
    by_id = {block.get("Id", ""): block for block in blocks}
    for name in names:
        block = by_id.get(unit_name(name), {})
        states[name] = {
            "exists": block.get("LoadState") == "loaded",
            "active": block.get("ActiveState") == "active",
            "enabled": block.get("UnitFileState") in ("enabled", "enabled-runtime", "static", "alias"),
        }
    return states


def path_state(path: str) -> dict[str, Any]:
    try:
        st = os.lstat(path)
    except OSError:
        return {"exists": False, "type": None, "mode": None, "uid": None, "gid": None, "size": None, "target": None,
                "sha256": None}
    kind = next((name for test, name in FILE_TYPES if test(st.st_mode)), "other")
    return {"exists": True, "type": kind, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid, "gid": st.st_gid,
            "size": st.st_size, "target": os.readlink(path) if kind == "link" else None,
            "sha256": sha256_of(path) if kind == "file" and st.st_size <= HASH_LIMIT else None}


def user_state(name: str) -> dict[str, Any]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return {"exists": False, "uid": None, "gid": None, "home": None, "groups": []}
    groups = {group.gr_name for group in grp.getgrall() if name in group.gr_mem}
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrgid(entry.pw_gid).gr_name)
    return {"exists": True, "uid": entry.pw_uid, "gid": entry.pw_gid, "home": entry.pw_dir, "groups": sorted(groups)}


def read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(READ_LIMIT).replace(b"\0", b"\n").decode("utf-8", errors="replace")
    except OSError:
        return None


def timezone() -> str:
    """The zone /etc/localtime points at (what timedatectl reports), else /etc/timezone's."""
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return (read_text("/etc/timezone") or "").strip()
    return target.split("/zoneinfo/", 1)[-1]


def output_of(command: str, *args: str) -> str | None:
    """What an installed command prints (stdout), or None where it is not installed or fails."""
    path = shutil.which(command)
    if path is None:
        return None
    run = subprocess.run([path, *args], capture_output=True, text=True, check=False)
    return run.stdout if run.returncode == 0 else None


def system_state() -> dict[str, Any]:
    listed = output_of("locale", "-a") or ""
    lang = next((line.split("=", 1)[1].strip().strip('"') for line in (read_text("/etc/default/locale") or "").splitlines()
                 if line.startswith("LANG=")), "")
    throttled = (output_of("vcgencmd", "get_throttled") or "").strip().partition("=")[2]
    return {"timezone": timezone(), "locales": listed.split(), "lang": lang, "page_size": os.sysconf("SC_PAGE_SIZE"),
            "throttled": throttled or None}


def host_state(params: dict[str, Any]) -> dict[str, Any]:
    packages = installed_packages(params["packages"])
    services = service_states(params["services"])
    result: dict[str, Any] = {
        "packages": packages,
        "packages_missing": [name for name in params["packages"] if name not in packages],
        "services": services,
        "services_down": [name for name, state in services.items() if not (state["active"] and state["enabled"])],
        "paths": {path: path_state(path) for path in params["paths"]},
        "users": {name: user_state(name) for name in params["users"]},
        "read": {path: read_text(path) for path in params["read"]},
    }
    if params["system"]:
        result["system"] = system_state()
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "default": []},
            "services": {"type": "list", "elements": "str", "default": []},
            "paths": {"type": "list", "elements": "path", "default": []},
            "users": {"type": "list", "elements": "str", "default": []},
            "read": {"type": "list", "elements": "path", "default": []},
            "system": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **host_state(module.params))


if __name__ == "__main__":
    main()
