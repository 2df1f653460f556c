"""Which keys a composed config may hold: those of the options chosen under ``conf/``.

Hydra's ``+group.key=value`` adds a key that no option declares, and nothing would read it: a
typo (``+method.client_rl=0.1``) would run the defaults in silence. :func:`unknown_keys` compares
a composed config with the yaml it came from and lists every key that does not belong:

- a *section group* is any directory under ``conf/`` (``method``, ``task``, ..., ``fault``)
  except Hydra's own ``hydra/`` and the groups whose options are ``# @package _global_``
  (``experiment``: they edit other sections, they are not one). A section accepts the keys of
  the yaml of its chosen option, ``conf/<group>/<name>.yaml`` (the option whose ``name:`` is the
  section's ``name``), merged with the options its own ``defaults:`` list names, and with the
  section's keys in ``conf/config.yaml`` if it sets any;
- the top level accepts the keys of ``conf/config.yaml`` (without ``defaults`` and ``hydra``) and
  the section groups;
- a nested mapping (``engine.client_resources``) accepts the keys the yaml gives it; a key whose
  yaml value is not a mapping (``task.x0: null``) takes any value, which its reader checks;
- :data:`FREE_FORM` names the mappings whose sub-keys are data, not settings.

Keys that :func:`fedsim.build.resolve` derives (``method.cohort_size``, ``method.compressor``,
...) are no option's keys: ``resolve`` checks them against what it derives itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from fedsim.errors import ConfigError, unknown

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Mappings whose sub-keys are not settings, so they are not checked. ``tuned`` is a lookup table
# ``tuned.<method>.<key>`` that experiments fill and conf/method/*.yaml read with
# ``${oc.select:tuned.<method>.<key>,auto}``: its entries are whatever those files read.
FREE_FORM: frozenset[str] = frozenset({"tuned"})
# Directories under conf/ that are Hydra's own groups, not sections of a run's config.
HYDRA_GROUPS: frozenset[str] = frozenset({"hydra"})
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)")


class Unknown(NamedTuple):
    """A key no option declares: its dotted ``path``, where it is (``"for method 'fedavg'"``,
    ``"at the top level"``) and the valid keys there."""

    path: str
    owner: str
    valid: tuple[str, ...]


@functools.lru_cache(maxsize=256)
def _load(path: Path) -> dict[str, Any]:
    """A yaml file as a plain dict, interpolations left as strings."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping of keys to values")
    return data


def _package(path: Path) -> str | None:
    """The ``# @package`` header of a yaml file, if it has one."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            match = _PACKAGE.match(line)
            if match:
                return match.group(1)
    return None


def _merge(base: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """The union of two key trees (a mapping wins over a scalar under the same key)."""
    out = dict(base)
    for key, value in more.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(dict(old), value)
        elif not isinstance(old, Mapping):
            out[key] = value
    return out


def _nest(path: str, tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` placed under the dotted or slashed ``path``."""
    for part in reversed([p for p in re.split(r"[./]", path) if p]):
        tree = {part: tree}
    return tree


def option_tree(path: Path, conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The keys of one option file composed with its own ``defaults:`` list.

    Entries read: ``_self_``; ``other`` (an option of the same group, merged in place);
    ``sub: name`` (``<group>/sub/name.yaml`` under the key ``sub``) and ``/group: name``
    (``conf/group/name.yaml`` under ``group``); ``optional``/``override`` prefixes and
    ``@package`` suffixes are read as Hydra's defaults, with the package ignored.
    """
    tree = {k: v for k, v in _load(path).items() if k != "defaults"}
    for entry in _load(path).get("defaults") or ():
        if isinstance(entry, str):
            if entry != "_self_":
                tree = _merge(tree, option_tree(path.parent / f"{entry}.yaml", conf_dir))
            continue
        if not isinstance(entry, Mapping):
            continue
        for key, name in entry.items():
            group = re.sub(r"^(optional|override)\s+", "", str(key)).split("@")[0]
            if name is None or group == "_self_":
                continue
            folder = conf_dir / group.lstrip("/") if group.startswith("/") else path.parent / group
            sub = option_tree(folder / f"{name}.yaml", conf_dir)
            tree = _merge(tree, _nest(group.lstrip("/"), sub))
    return tree


@functools.lru_cache(maxsize=8)
def section_groups(conf_dir: Path = CONF_DIR) -> dict[str, dict[str, Path]]:
    """``group -> {option name -> file}`` for every section group under ``conf_dir``.

    An option's name is its ``name:`` key (every shipped option has one, equal to its file
    name), else its file name.
    """
    groups: dict[str, dict[str, Path]] = {}
    for folder in sorted(p for p in conf_dir.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.yaml"))
        if folder.name in HYDRA_GROUPS or not files:
            continue
        if any(_package(f) == "_global_" for f in files):
            continue
        groups[folder.name] = {str(_load(f).get("name", f.stem)): f for f in files}
    return groups


@functools.lru_cache(maxsize=8)
def top_level(conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The key tree of ``config.yaml`` (without ``defaults`` and ``hydra``)."""
    primary = _load(conf_dir / "config.yaml")
    return {k: v for k, v in primary.items() if k not in ("defaults", "hydra")}


def accepted(group: str, name: object, conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """The key tree of option ``name`` of ``group`` (a :class:`ConfigError` listing the valid
    choices when there is no such option)."""
    options = section_groups(conf_dir)[group]
    if name is None:
        raise ConfigError(
            f"the {group} section has no name: choose one with {group}=NAME; "
            f"valid choices: {', '.join(sorted(options))}"
        )
    if str(name) not in options:
        raise unknown(group, name, tuple(options))
    tree = option_tree(options[str(name)], conf_dir)
    extra = top_level(conf_dir).get(group)
    return _merge(tree, extra) if isinstance(extra, Mapping) else tree


def _compare(given: Mapping, tree: Mapping, prefix: str, owner: str) -> list[Unknown]:
    """The keys of ``given`` (at dotted ``prefix``) that ``tree`` lacks, nested mappings too."""
    found: list[Unknown] = []
    valid = tuple(sorted(str(k) for k in tree))
    for key, value in given.items():
        path = f"{prefix}{key}"
        if key not in tree:
            found.append(Unknown(path, owner, valid))
        elif path in FREE_FORM:
            continue
        elif isinstance(tree[key], Mapping) and isinstance(value, Mapping):
            found += _compare(value, tree[key], f"{path}.", f"in {path}")
    return found


def unknown_keys(cfg: Mapping, conf_dir: Path = CONF_DIR) -> list[Unknown]:
    """Every key of the composed ``cfg`` that its options do not declare (module docstring).

    Raises :class:`ConfigError` for a section whose ``name`` is no option of its group.
    """
    groups = section_groups(conf_dir)
    top = {**top_level(conf_dir), **{g: {} for g in groups}}
    found = _compare({k: v for k, v in cfg.items() if k not in groups}, top, "", "at the top level")
    for group in groups:
        section = cfg.get(group)
        if isinstance(section, Mapping):
            name = section.get("name")
            tree = accepted(group, name, conf_dir)
            found += _compare(section, tree, f"{group}.", f"for {group} {name!r}")
    return found


def error(found: Iterable[Unknown]) -> ConfigError:
    """One message for unknown keys, grouped by owner, each group with its valid keys."""
    owners: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for item in found:
        owners.setdefault((item.owner, item.valid), []).append(item.path)
    parts = []
    for (owner, valid), paths in owners.items():
        what = "key" if len(paths) == 1 else "keys"
        parts.append(
            f"unknown {what} {', '.join(paths)} {owner}; valid keys: {', '.join(valid) or 'none'}"
        )
    return ConfigError("; ".join(parts))


def check(cfg: Mapping, skip: Iterable[str] = (), conf_dir: Path = CONF_DIR) -> None:
    """Raise :func:`error` for the unknown keys of ``cfg``, except the top-level keys of the
    sections named in ``skip`` (``method.foo``, which ``resolve`` may derive itself)."""
    skipped = {f"{s}." for s in skip}
    found = [
        u
        for u in unknown_keys(cfg, conf_dir)
        if not any(u.path.startswith(s) and "." not in u.path[len(s) :] for s in skipped)
    ]
    if found:
        raise error(found)
