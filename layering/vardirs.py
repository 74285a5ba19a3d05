"""Package content under /opt and /usr/local, which an OSTree image links into /var.

An rpm-ostree image has /opt -> var/opt and /usr/local -> ../var/usrlocal: /var is the
machine's, never the image's, so rpm cannot unpack a vendor RPM's /opt/NAME there (rpm-ostree
issue 233). As rpm-ostree does since PR 1795 (rust/src/utils.rs translate_path_for_ostree:
opt/foo -> usr/lib/opt/foo; src/libpriv/rpmostree-scripts.cxx: scriptlets get /opt -> usr/lib/opt),
compose points /opt at usr/lib/opt (and /usr/local at usr/lib/usrlocal) while rpm runs, so the
payload and the scriptlets' writes land in the image and roll back with it; a tmpfiles.d file in
the image then makes /var/opt/NAME a link to it, live and at every boot (rust/src/importer.rs
tmpfiles_symlink_entries writes `L /opt/NAME - - - - ../../usr/lib/opt/NAME`). `L` never
replaces what is there, so an administrator's own /var/opt/NAME is kept.

/usr/local is shared by nature (bin, lib, share): its links are made one level deeper,
/var/usrlocal/bin/TOOL, in a /var/usrlocal/bin the tmpfiles.d file creates.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The generated tmpfiles.d file, in every layered commit that has such content.
TMPFILES_CONF = PurePosixPath("/usr/lib/tmpfiles.d/lulayer-opt-usrlocal.conf")


@dataclass(frozen=True)
class VarDir:
    """A top-level path the base links into /var, and where a package's content for it goes."""

    path: str  # relative to the root: "opt", "usr/local"
    var: str  # where the base's link points, relative to the root: "var/opt"
    image: str  # where the content is kept in the image, relative to the root
    depth: int  # path components below it that get a link each

    def image_link(self) -> str:
        """The link that stands in for self.path during compose, relative to its parent."""
        return os.path.relpath(self.image, os.path.dirname(self.path) or ".")


VAR_DIRS = (
    VarDir("opt", "var/opt", "usr/lib/opt", 1),
    VarDir("usr/local", "var/usrlocal", "usr/lib/usrlocal", 2),
)


@dataclass(frozen=True)
class Redirect:
    """A link of the base replaced during compose: restored after the rpm transaction."""

    var_dir: VarDir
    target: str  # the base's link target
    made_image_dir: bool


@dataclass(frozen=True)
class Link:
    """One `L` line of TMPFILES_CONF: /PATH (under /var) links to TARGET (relative)."""

    path: PurePosixPath
    target: str


def redirect(root: Path) -> tuple[Redirect, ...]:
    """Point each of root's /var links of VAR_DIRS at its place in the image (the caller is the
    compose child: root is its overlay, which keeps the base checkout safe)."""
    done = []
    for vd in VAR_DIRS:
        link = root / vd.path
        if not link.is_symlink():
            continue  # a base with a real /opt keeps the content there
        target = os.readlink(link)
        if os.path.normpath(os.path.join(os.path.dirname(vd.path), target)) != vd.var:
            continue
        image = root / vd.image
        made = not image.is_dir()
        image.mkdir(mode=0o755, parents=True, exist_ok=True)
        link.unlink()
        link.symlink_to(vd.image_link())
        done.append(Redirect(vd, target, made))
    return tuple(done)


def restore(root: Path, done: tuple[Redirect, ...]) -> None:
    """Put the base's links back, and drop an image folder nothing was installed into."""
    for r in done:
        link = root / r.var_dir.path
        link.unlink()
        link.symlink_to(r.target)
        image = root / r.var_dir.image
        if r.made_image_dir and not any(image.iterdir()):
            image.rmdir()


def new_links(upper: Path, lower: Path) -> tuple[tuple[str, ...], tuple[Link, ...]]:
    """The folders to create and the links to make in /var for what compose added to the
    image folders: upper is the compose's upper layer, lower the base checkout."""
    dirs: list[str] = []
    links: list[Link] = []
    for vd in VAR_DIRS:
        for rel in _entries(upper / vd.image, vd.depth):
            if (lower / vd.image / rel).exists() or (lower / vd.image / rel).is_symlink():
                continue  # the base image's own, linked by the base's own tmpfiles.d
            path = PurePosixPath("/", vd.var, rel)
            parent = PurePosixPath("/", vd.var, *PurePosixPath(rel).parts[:-1])
            if parent != PurePosixPath("/", vd.var) and str(parent) not in dirs:
                dirs.append(str(parent))
            links.append(Link(path, os.path.relpath(f"/{vd.image}/{rel}", str(path.parent))))
    return tuple(dirs), tuple(links)


def _entries(folder: Path, depth: int, prefix: str = "") -> list[str]:
    """The paths depth levels below folder (a file above that depth counts where it is)."""
    if not folder.is_dir():
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        rel = f"{prefix}{name}"
        full = folder / name
        if depth > 1 and full.is_dir() and not full.is_symlink():
            out += _entries(full, depth - 1, f"{rel}/")
        else:
            out.append(rel)
    return out


_PLAIN = re.compile(r"[A-Za-z0-9._+@%:,/=-]+")


def _quote(path: str) -> str:
    # systemd-tmpfiles takes a path in double quotes with C escapes; the target is the rest of
    # the line and is never quoted.
    if _PLAIN.fullmatch(path):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tmpfiles_text(dirs: tuple[str, ...], links: tuple[Link, ...]) -> str:
    lines = ["# Links in /var to layered packages' /opt and /usr/local content, kept in the image",
             "# (made by lulayer at compose; `L` never replaces what an administrator put there)."]
    lines += [f"d {_quote(d)} 0755 root root -" for d in dirs]
    lines += [f"L {_quote(str(lk.path))} - - - - {lk.target}" for lk in links]
    return "\n".join(lines) + "\n"


def write_tmpfiles(root: Path, upper: Path, lower: Path) -> None:
    """Write TMPFILES_CONF into root (the compose overlay) when compose added such content."""
    dirs, links = new_links(upper, lower)
    if not links:
        return
    conf = root / str(TMPFILES_CONF).lstrip("/")
    conf.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    conf.write_text(tmpfiles_text(dirs, links))
    conf.chmod(0o644)


def read_links(root: Path) -> tuple[Link, ...]:
    """The links root's TMPFILES_CONF asks for (none without one)."""
    try:
        text = (root / str(TMPFILES_CONF).lstrip("/")).read_text()
    except FileNotFoundError:
        return ()
    links = []
    for line in text.splitlines():
        if not line.startswith("L "):
            continue
        rest = line[2:].lstrip()
        if rest.startswith('"'):
            m = re.match(r'"((?:[^"\\]|\\.)*)"\s+(.*)$', rest)
            if m is None:
                continue
            path, tail = re.sub(r"\\(.)", r"\1", m.group(1)), m.group(2)
        else:
            path, _, tail = rest.partition(" ")
        fields = tail.split(None, 4)
        if len(fields) == 5:
            links.append(Link(PurePosixPath(path), fields[4]))
    return tuple(links)


def is_our_link(root: Path, link: Link) -> bool:
    """Whether root's link.path is the link lulayer asks for (and not an administrator's own)."""
    full = root / str(link.path).lstrip("/")
    return full.is_symlink() and os.readlink(full) == link.target
