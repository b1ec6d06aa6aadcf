"""Site settings checked against the cluster before anything is queued: account, QOS, constraint, the rest.

A wrong account or QOS is otherwise found by sbatch at submit time (after runs were recorded), or, where
the site does not enforce associations, silently replaced by the user's default account. The accounting
records (sacctmgr) say which accounts and QOS this user may use, so the message can list them; the node
features (sinfo) say which constraints can ever be met. What those cannot judge (a reservation, an extra
sbatch option, combinations) goes through `sbatch --test-only`, which asks the controller without queueing.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable, Sequence
from subprocess import CompletedProcess

from vitolaunch.errors import ResourceError
from vitolaunch.spec.resources import Resources

Run = Callable[..., CompletedProcess]


def config_value(config_text: str, key: str) -> str:
    """A value of `scontrol show config` ('Key = Value' lines); '' when absent."""
    for line in config_text.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == key:
            return value.strip()
    return ""


def submitting_user() -> str:
    """The user SLURM sees: the uid running vitolaunch (not $USER, which a sudo or a container may keep)."""
    return pwd.getpwuid(os.getuid()).pw_name


def check_association(resources: Resources, run: Run, config: Callable[[], str], partition: str) -> None:
    """resources.account / qos must be ones this user may use, where the cluster enforces associations."""
    if not (resources.account or resources.qos):
        return
    config_text = config()
    enforce = config_value(config_text, "AccountingStorageEnforce").lower()
    if not any(word in enforce for word in ("associations", "qos", "limits", "safe")):
        return  # nothing enforced: SLURM takes any account; sbatch --test-only still has its say
    cluster, user = config_value(config_text, "ClusterName"), submitting_user()
    assoc = run(["sacctmgr", "-n", "-P", "show", "assoc", "where", f"users={user}", f"cluster={cluster}",
                 "format=account,partition,qos"], check=False)
    if assoc.returncode != 0 or not assoc.stdout.strip():
        return  # accounting unreachable or empty: leave it to sbatch --test-only
    allowed: dict[str, set[str]] = {}
    for line in assoc.stdout.splitlines():
        account, assoc_partition, qos = (line.split("|") + ["", "", ""])[:3]
        if assoc_partition and assoc_partition != partition:
            continue
        allowed.setdefault(account, set()).update(q for q in qos.split(",") if q)
    account = resources.account
    if account is None:
        default = run(["sacctmgr", "-n", "-P", "show", "user", user, "format=defaultaccount"], check=False)
        account = default.stdout.strip().splitlines()[0] if default.returncode == 0 and default.stdout.strip() else None
    where = f"user '{user}' on cluster '{cluster}' (partition '{partition}')"
    if resources.account and resources.account not in allowed:
        raise ResourceError(
            f"resources.account '{resources.account}' is not an account {where} may use; yours: "
            f"{', '.join(sorted(allowed))}. Fix the spec or the cluster profile, or ask your admin to add you "
            f"(sacctmgr add user {user} account={resources.account}): nothing was submitted",
            key="resources.account",
        )
    if resources.qos and account in allowed and resources.qos not in allowed[account]:
        raise ResourceError(
            f"resources.qos '{resources.qos}' is not a QOS {where} may use with account '{account}'; allowed: "
            f"{', '.join(sorted(allowed[account])) or 'none'}. Fix the spec or the cluster profile: nothing was submitted",
            key="resources.qos",
        )


def constraint_features(constraint: str) -> list[str]:
    """The feature names of a SLURM constraint expression ('a100&ib', '[rack1|rack2]', 'gpu*2')."""
    return re.findall(r"[A-Za-z_][A-Za-z0-9_.:-]*", constraint)


def check_constraint(resources: Resources, run: Run, partition: str) -> None:
    """Every feature the constraint names exists on some node of the partition (else it never starts)."""
    if not resources.constraint:
        return
    proc = run(["sinfo", "-h", "-p", partition, "-o", "%f"], check=False)
    if proc.returncode != 0:
        return
    known = {f for line in proc.stdout.split() for f in line.split(",") if f and f != "(null)"}
    missing = [f for f in constraint_features(resources.constraint) if f not in known]
    if missing:
        raise ResourceError(
            f"resources.constraint '{resources.constraint}' names feature(s) {', '.join(missing)} that no node of "
            f"partition '{partition}' has (features there: {', '.join(sorted(known)) or 'none'}): nothing was submitted",
            key="resources.constraint",
        )


SITE_KEYS_FOR_TEST_ONLY: Sequence[str] = ("account", "qos", "constraint", "reservation", "exclude", "exclusive",
                                          "sbatch_extra", "gpus_per_task")


def needs_test_only(resources: Resources) -> bool:
    return any(getattr(resources, key) for key in SITE_KEYS_FOR_TEST_ONLY)
