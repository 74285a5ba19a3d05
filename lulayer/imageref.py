"""Container image references in a .origin, as ostree-ext reads them, and the ref it keeps an image under.

A Fedora CoreOS or bootc host's origin names its image as
``[origin] container-image-reference=ostree-remote-registry:fedora:quay.io/fedora/fedora-coreos:stable``.
The forms are ostree-ext's ``OstreeImageReference`` (containers/bootc ostree-ext/src/container/mod.rs,
``impl TryFrom<&str> for OstreeImageReference``): a signature source, then a transport and an image name.
ostree-ext keeps each pulled image as a merge commit under ``ostree/container/image/`` followed by
the image's ``transport:name``, escaped for a ref (ostree-ext/src/container/store.rs ``ref_for_image``,
ostree-ext/src/refescape.rs). Those paths are from the bootc snapshot of 2025-03; bootc later moved
them under crates/, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# ostree-ext/src/container/store.rs IMAGE_PREFIX: where a pulled image's merge commit is kept.
IMAGE_REF_PREFIX = "ostree/container/image"


class Transport(StrEnum):
    """ostree-ext's ``Transport``, by the name an image reference spells it with."""

    REGISTRY = "registry"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    CONTAINERS_STORAGE = "containers-storage"
    DIR = "dir"

    @property
    def prefix(self) -> str:
        """How ostree-ext writes the transport in front of a name (``impl Display for Transport``):
        a registry as ``docker://``, which is what the ref of a registry image is made from."""
        return "docker://" if self is Transport.REGISTRY else f"{self.value}:"


class BadImageReference(ValueError):
    """An image reference in a form ostree-ext does not read."""


@dataclass(frozen=True)
class ImageReference:
    """An ``OstreeImageReference``: how its signature is checked, and which image."""

    sigverify: str  # ostree-unverified-image, ostree-image-signed, or ostree-remote-image:REMOTE
    transport: Transport
    name: str  # e.g. quay.io/fedora/fedora-coreos:stable

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Read text as ostree-ext does; raise BadImageReference saying what is wrong."""
        scheme, sep, rest = text.partition(":")
        if not sep:
            raise BadImageReference(f"missing ':' in {text!r}")
        if scheme in ("ostree-image-signed", "ostree-unverified-image"):
            sigverify, image = scheme, rest
        elif scheme == "ostree-unverified-registry":  # shorthand for ostree-unverified-image:registry:
            sigverify, image = "ostree-unverified-image", f"registry:{rest}"
        elif scheme in ("ostree-remote-registry", "ostree-remote-image"):
            remote, sep, rest = rest.partition(":")
            if not sep:
                raise BadImageReference(f"missing second ':' in {text!r}")
            sigverify = f"ostree-remote-image:{remote}"
            image = f"registry:{rest}" if scheme == "ostree-remote-registry" else rest
        else:
            raise BadImageReference(f"unknown image reference scheme {scheme!r}")
        transport_name, sep, name = image.partition(":")
        if not sep:
            raise BadImageReference(f"missing ':' after the transport in {text!r}")
        try:
            transport = Transport("registry" if transport_name == "docker" else transport_name)
        except ValueError:
            raise BadImageReference(f"unknown transport {transport_name!r}") from None
        if not name:
            raise BadImageReference(f"empty image name in {text!r}")
        if transport_name == "docker":
            if not name.startswith("//"):
                raise BadImageReference(f"missing // in docker:// in {text!r}")
            name = name[2:]
        return cls(sigverify, transport, name)

    @property
    def image(self) -> str:
        """The image alone, as ostree-ext prints an ``ImageReference``: ``docker://quay.io/...``."""
        return f"{self.transport.prefix}{self.name}"

    @property
    def ostree_ref(self) -> str:
        """The ref ostree-ext keeps this image's merge commit under (store.rs ``ref_for_image``)."""
        return f"{IMAGE_REF_PREFIX}/{escape_for_ref(self.image)}"


def escape_for_ref(text: str) -> str:
    """ostree-ext's ``escape_for_ref`` (refescape.rs): ASCII letters and digits and ``-`` stay,
    ``/`` stays after a letter or digit when more follows, ``_`` becomes ``__``, anything else
    ``_HEX_`` (its code point, upper case, at least two digits)."""
    if not text:
        raise BadImageReference("an empty string has no ref")
    out: list[str] = []
    previous_alphanumeric = False
    for i, c in enumerate(text):
        if c == "\0":
            raise BadImageReference("an embedded NUL has no ref")
        alphanumeric = c.isascii() and c.isalnum()
        if alphanumeric or c == "-" or (c == "/" and previous_alphanumeric and i + 1 < len(text)):
            out.append(c)
        elif c == "_":
            out.append("__")
        else:
            out.append(f"_{ord(c):02X}_")
        previous_alphanumeric = alphanumeric
    return "".join(out)
