"""Cluster profiles: a cluster's site settings said once, merged under each spec's own `resources:`.

The file is `$VITOLAUNCH_CLUSTERS`, else `$XDG_CONFIG_HOME/vitolaunch/clusters.yaml` (`~/.config/...`):

    default: booster            # optional: the profile of specs that name none
    profiles:
      booster:
        partition: booster
        account: proj123
        setup: ["module load cuda/12.4"]
        env: {NCCL_SOCKET_IFNAME: ib0}

A profile holds any `resources:` key but `profile`. The spec's own keys win; `env`, `sbatch_extra` and
`retries` merge key by key, everything else (lists included) is replaced whole. Errors in the file are
located (file:line:key) like spec errors, and each merged value remembers where it came from, for --dry-run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vitolaunch.errors import SpecError
from vitolaunch.spec.locate import DocPath, Locator, did_you_mean, dotted, located_validation_error, short_repr
from vitolaunch.spec.resources import Resources
from vitolaunch.spec.yaml_lines import load_with_lines

PROFILE_ENV = "VITOLAUNCH_CLUSTERS"
MERGED_BY_KEY = ("env", "sbatch_extra", "retries")
_RESOURCE_KEYS = [key for key in Resources.model_fields if key != "profile"]


def profile_file() -> Path:
    """Where the cluster profiles are read from (the file need not exist)."""
    if os.environ.get(PROFILE_ENV):
        return Path(os.environ[PROFILE_ENV]).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "vitolaunch" / "clusters.yaml"


@dataclass
class ClusterProfiles:
    file: str
    default: str | None
    profiles: dict[str, dict[str, Any]]
    locator: Locator


def load_profiles(path: Path | None = None) -> ClusterProfiles | None:
    """The profile file, every profile validated; None when there is no file (and none was asked for by name)."""
    explicit = path is not None or bool(os.environ.get(PROFILE_ENV))
    path = path or profile_file()
    file = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise SpecError(f"the cluster profile file does not exist (named by ${PROFILE_ENV})", file=file,
                            hint=f"Create it, or unset {PROFILE_ENV} to use ~/.config/vitolaunch/clusters.yaml.") from None
        return None
    except OSError as exc:
        raise SpecError(f"cannot read the cluster profile file: {exc.strerror}", file=file) from None
    data, lines = load_with_lines(text, file)
    locator = Locator(file, lines)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SpecError("a cluster profile file is a mapping: default: NAME, profiles: {NAME: {...}}", file=file, line=1)
    for key in data:
        if key not in ("default", "profiles"):
            raise locator.error((key,), "unknown key", key=str(key),
                                hint=did_you_mean(str(key), ["default", "profiles"]) or "Valid keys here: default, profiles.")
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise locator.error(("profiles",), "must map profile names to resources settings", key="profiles")
    for name, settings in profiles.items():
        _check_profile(name, settings, locator)
    default = data.get("default")
    if default is not None and (not isinstance(default, str) or default not in profiles):
        known = ", ".join(map(str, profiles)) or "none"
        raise locator.error(("default",), f"names no profile of this file (got {short_repr(default)}; profiles: {known})",
                            key="default")
    return ClusterProfiles(file, default, {str(k): v or {} for k, v in profiles.items()}, locator)


def _check_profile(name: Any, settings: Any, locator: Locator) -> None:
    path: DocPath = ("profiles", name)
    if settings is None:
        return
    if not isinstance(settings, dict):
        raise locator.error(path, "a profile is a mapping of resources settings (account:, qos:, setup:, ...)",
                            key=f"profiles.{name}")
    if "profile" in settings:
        raise locator.error((*path, "profile"), "profiles do not name other profiles", key=f"profiles.{name}.profile",
                            hint="Copy the settings you want to share.")

    def hint(loc: DocPath) -> str | None:
        return did_you_mean(dotted(loc), _RESOURCE_KEYS) or f"Valid keys here: {', '.join(_RESOURCE_KEYS)}."

    try:
        Resources.model_validate(settings)
    except ValidationError as exc:
        raise located_validation_error(exc, locator, path, hint) from None


def apply_profile(data: dict[str, Any], spec_locator: Locator) -> dict[str, str]:
    """Merge the chosen profile under `data['resources']` (in place); return where each resources value came from.

    The origin of a value, by its dotted key inside `resources`: `file:line` of the spec or profile file, or
    the `-o` override that set it. Keys left out are the defaults.
    """
    resources = data.get("resources")
    if resources is None:
        resources = {}
    if not isinstance(resources, dict):
        return {}  # validation names the problem
    named = resources.get("profile")
    profiles = load_profiles_for(named, spec_locator)
    sources = _origins(resources, ("resources",), spec_locator, "")
    if profiles is None:
        return sources
    name = named if named is not None else profiles.default
    if name is None:
        return sources
    if name not in profiles.profiles:
        known = ", ".join(profiles.profiles) or "none"
        raise spec_locator.error(("resources", "profile"), f"no profile '{name}' in {profiles.file} (profiles: {known})",
                                 key="resources.profile", hint=did_you_mean(str(name), list(profiles.profiles)))
    settings = profiles.profiles[name]
    tag = f" (profile {name})"
    merged = _origins(settings, ("profiles", name), profiles.locator, tag)
    merged.update(sources)
    for key, value in settings.items():
        if key in MERGED_BY_KEY and isinstance(value, dict) and isinstance(resources.get(key), dict):
            _locate_merged(spec_locator, profiles, name, [(key, k) for k in value if k not in resources[key]])
            resources[key] = {**value, **resources[key]}
        elif key not in resources:
            _locate_merged(spec_locator, profiles, name, [(key,)])
            resources[key] = value
    if named is None:
        resources["profile"] = name
        merged["profile"] = f"{profiles.file}:{profiles.locator.lines.get(('default',), '?')} (default profile)"
    data["resources"] = resources
    return merged


def _locate_merged(spec_locator: Locator, profiles: ClusterProfiles, name: str, keys: list[tuple[str, ...]]) -> None:
    """Errors about these `resources` keys, which the profile gave, point at the profile's lines."""
    for key in keys:
        inside = ("profiles", name, *key)
        for path, line in profiles.locator.lines.items():
            if path[: len(inside)] == inside:
                spec_locator.merged_from[("resources", *key, *path[len(inside):])] = (profiles.file, line)


def load_profiles_for(named: Any, spec_locator: Locator) -> ClusterProfiles | None:
    """The profiles, or None; a spec that names a profile when there is no file is an error at its line."""
    profiles = load_profiles()
    if profiles is None and named is not None:
        raise spec_locator.error(("resources", "profile"), f"names profile '{named}', but there is no cluster profile "
                                 f"file ({profile_file()} does not exist)", key="resources.profile",
                                 hint=f"Create it (see README: Running on your cluster), or set {PROFILE_ENV} to its path.")
    return profiles


def _origins(tree: dict[str, Any], prefix: DocPath, locator: Locator, tag: str) -> dict[str, str]:
    """Dotted key (inside resources) -> where it was written, for every leaf of `tree` (mappings are walked)."""
    found: dict[str, str] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict) and node and path and path[0] in MERGED_BY_KEY:
            for key, value in node.items():
                walk(value, (*path, str(key)))
            return
        origin = locator.error((*prefix, *path), "")
        where = origin.file or "?"
        if origin.override is not None:
            where += f" (-o {origin.override})"
        elif origin.line is not None:
            where += f":{origin.line}"
        found[".".join(path)] = where + tag

    for key, value in tree.items():
        walk(value, (str(key),))
    return found
