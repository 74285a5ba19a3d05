"""The package-level model: a package as rpm names it, and the change between two package sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Package:
    name: str
    epoch: int
    version: str
    release: str
    arch: str

    @property
    def evr(self) -> str:
        return f"{self.epoch}:{self.version}-{self.release}" if self.epoch else f"{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"

    def __str__(self) -> str:
        return self.nevra


@dataclass(frozen=True)
class PackageChanges:
    added: tuple[Package, ...] = ()
    removed: tuple[Package, ...] = ()
    upgraded: tuple[tuple[Package, Package], ...] = ()

    @classmethod
    def between(cls, old: Sequence[Package], new: Sequence[Package]) -> PackageChanges:
        old_by = {p.name: p for p in old}
        new_by = {p.name: p for p in new}
        return cls(
            added=tuple(sorted(p for n, p in new_by.items() if n not in old_by)),
            removed=tuple(sorted(p for n, p in old_by.items() if n not in new_by)),
            upgraded=tuple(sorted((old_by[n], p) for n, p in new_by.items() if n in old_by and old_by[n] != p)),
        )

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.upgraded)

    def to_json(self) -> dict[str, object]:
        """The change as full NEVRAs; upgraded as [old, new] pairs."""
        return {
            "added": [p.nevra for p in self.added],
            "removed": [p.nevra for p in self.removed],
            "upgraded": [[old.nevra, new.nevra] for old, new in self.upgraded],
        }
