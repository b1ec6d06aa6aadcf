"""Site settings (resources.account/qos/.../sbatch_extra/setup/env), credentials refused, cluster profiles merged
under the spec with provenance, and the warning before the time limit by checkpoint size class. No cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vitolaunch.backends.slurm import render_script
from vitolaunch.errors import SpecError
from vitolaunch.spec import expand, load_spec, trial_resources
from vitolaunch.spec.profile import PROFILE_ENV
from vitolaunch.spec.resources import Resources, checkpoint_size_class, default_signal_delay_s, with_signal_delay

REPO = Path(__file__).resolve().parents[2]

SPEC = """\
name: site
base: {train: {steps: 5}, model: {width: 8}}
parameters:
  loss.temperature: [0.1]
resources:
  cluster: slurm
  nodes: 2
  timeout_min: 30
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def spec_with(folder: Path, resources: str) -> Path:
    return write(folder, "site.yaml", SPEC + textwrap.indent(textwrap.dedent(resources), "  "))


def refused(path: Path, overrides: tuple[str, ...] = ()) -> SpecError:
    with pytest.raises(SpecError) as caught:
        load_spec(path, overrides)
    assert "\n" not in str(caught.value)
    return caught.value


# ---------------------------------------------------------------- sbatch_extra


@pytest.mark.parametrize(
    ("option", "controlled_by"),
    [
        ("array", "resources.array_parallelism"),
        ("signal", "resources.signal_delay_s"),
        ("requeue", "resources.retries"),
        ("output", "one file per rank"),
        ("error", "one file per rank"),
        ("job-name", "spec key `name`"),
        ("J", "spec key `name`"),
        ("dependency", "chains the arrays"),
        ("nodes", "resources.nodes"),
        ("ntasks_per_node", "resources.tasks_per_node"),
        ("--time", "resources.timeout_min"),
        ("partition", "resources.partition"),
        ("wckey", "wckey=vitolaunch"),
        ("account", "resources.account"),
        ("gres", "resources.gpus_per_node"),
        ("export", "resources.env"),
    ],
)
def test_managed_sbatch_options_are_refused_naming_the_spec_key(tmp_path, option, controlled_by):
    path = spec_with(tmp_path, f"sbatch_extra:\n  mail-type: END\n  {option}: x\n")
    error = refused(path)
    assert error.line == 11 and error.key == f"resources.sbatch_extra.{option}", str(error)
    assert "managed by vitolaunch" in str(error) and controlled_by in str(error), str(error)


def test_other_sbatch_options_reach_the_script_quoted():
    resources = Resources(sbatch_extra={"mail-type": "END", "--comment": "two words", "mail_user": "a@b.c", "requeue-x": False},
                          reservation="maint", account="proj", qos="high", constraint="a100&ib", exclude=["n3", "n4"],
                          exclusive=True)
    script = render_script(resources, ["s.000.a"], Path("/logs/s"))
    for line in ("#SBATCH --mail-type=END", "#SBATCH --comment='two words'", "#SBATCH --mail-user=a@b.c",
                 "#SBATCH --reservation=maint", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --constraint='a100&ib'", "#SBATCH --exclude=n3,n4", "#SBATCH --exclusive"):
        assert line in script, script
    assert "requeue-x" not in script  # false means: do not add it


# ---------------------------------------------------------------- credentials

SECRET_VALUES = {
    "an AWS access key id": "AKIAIOSFODNN7EXAMPLE",
    "an AWS secret access key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "a GitHub token": "ghp_" + "a1B2c3D4" * 5,
    "a Hugging Face token": "hf_" + "AbCdEfGh" * 5,
    "a password in a URL": "https://alice:hunter2@minio.internal:9000",
}


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "HF_TOKEN", "MLFLOW_TRACKING_PASSWORD",
                                  "WANDB_API_KEY", "AWS_SESSION_TOKEN", "db_password"])
def test_env_with_a_credential_name_is_refused_without_echoing_it(tmp_path, name):
    path = spec_with(tmp_path, f"env:\n  OMP_NUM_THREADS: 4\n  {name}: s3cr3t-value-1234\n")
    error = refused(path)
    text = str(error)
    assert error.line == 11 and error.key == f"resources.env.{name}", text
    assert "shell that runs vitolaunch" in text and "s3cr3t-value-1234" not in text


def test_a_credential_given_with_o_is_refused_without_echoing_it(tmp_path):
    path = spec_with(tmp_path, "")
    for override in ("resources.env.HF_TOKEN=abc123secret", f"resources.env.ENDPOINT={SECRET_VALUES['a password in a URL']}"):
        text = str(refused(path, (override,)))
        assert "-o resources.env." in text and "=<hidden>" in text and "shell that runs vitolaunch" in text, text
        assert "abc123secret" not in text and "hunter2" not in text, text


@pytest.mark.parametrize(("kind", "value"), SECRET_VALUES.items(), ids=SECRET_VALUES.keys())
def test_env_value_shaped_like_a_credential_is_refused_without_echoing_it(tmp_path, kind, value):
    path = spec_with(tmp_path, f"env:\n  S3_ENDPOINT_SETTING: '{value}'\n")
    text = str(refused(path))
    assert f"looks like {kind}" in text and "shell that runs vitolaunch" in text, text
    assert value not in text


@pytest.mark.parametrize(
    "line",
    ["export AWS_SECRET_ACCESS_KEY=abc", "HF_TOKEN=abc python -c pass",
     f"huggingface-cli login --token {SECRET_VALUES['a Hugging Face token']}",
     f"aws configure set aws_access_key_id {SECRET_VALUES['an AWS access key id']}"],
)
def test_setup_line_carrying_a_credential_is_refused(tmp_path, line):
    path = spec_with(tmp_path, f"setup:\n  - module load cuda/12.4\n  - \"{line}\"\n")
    error = refused(path)
    assert error.line == 11 and error.key == "resources.setup.1", str(error)
    assert "Credentials are never settings" in str(error)


def test_ordinary_site_values_are_not_mistaken_for_credentials():
    resources = Resources(
        env={"NCCL_IB_HCA": "mlx5_0,mlx5_1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": 8, "PWD_HINT": "x",
             "LD_LIBRARY_PATH": "/usr/local/cuda-12.4/lib64:/opt/nccl/lib", "NCCL_DEBUG": "WARN"},
        setup=["module load cuda/12.4 nccl/2.21", "source /shared/venvs/vito/bin/activate", "export KEYBOARD=us"],
    )
    assert resources.env["OMP_NUM_THREADS"] == "8"


@pytest.mark.parametrize("name", ["MASTER_ADDR", "RANK", "SLURM_CPUS_PER_TASK", "CUDA_VISIBLE_DEVICES", "VITOLAUNCH_HOME"])
def test_env_cannot_override_what_vitolaunch_and_slurm_set(tmp_path, name):
    error = refused(spec_with(tmp_path, f"env:\n  {name}: '1'\n"))
    assert error.key == f"resources.env.{name}" and "cannot be overridden" in str(error)


# ---------------------------------------------------------------- GPUs, srun, signal delay


def test_gpus_per_task_binds_one_gpu_per_rank_on_sbatch_and_srun():
    resources = Resources(nodes=4, gpus_per_node=8, gpus_per_task=1, cpus_per_task=12)
    assert resources.tasks_per_node == 8 and resources.ranks == 32
    script = render_script(resources, ["s.000.a"], Path("/logs/s"))
    assert "#SBATCH --gpus-per-task=1" in script and "--gpus-per-node" not in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--cpus-per-task=12" in srun and "--gpus-per-task=1" in srun
    assert Resources(gpus_per_task=2, tasks_per_node=4).gpus_per_node == 8
    with pytest.raises(ValueError, match="give two of the three"):
        Resources(gpus_per_node=8, tasks_per_node=2, gpus_per_task=1)


def test_signal_delay_follows_the_checkpoint_size_class():
    assert checkpoint_size_class("resnet18", 64) == "small"
    assert checkpoint_size_class("resnet50", 64) == "medium"
    assert checkpoint_size_class("resnet50", 128) == "large"
    assert checkpoint_size_class("resnet50", 16) == "small"
    assert default_signal_delay_s("medium", 2880) == 180
    assert default_signal_delay_s("large", 2880) == 300
    assert default_signal_delay_s("large", 10) == 120  # never more than a fifth of the time limit
    long = Resources(timeout_min=2880)
    assert with_signal_delay(long, [("resnet18", 64), ("resnet50", 64)]).signal_delay_s == 180  # the largest wins
    assert with_signal_delay(long.model_copy(update={"signal_delay_s": 600}), [("resnet18", 64)]).signal_delay_s == 600
    assert "#SBATCH --signal=USR2@600" in render_script(Resources(timeout_min=60, signal_delay_s=600), ["s.0.a"], Path("/l"))
    with pytest.raises(ValueError, match="not shorter than the time limit"):
        Resources(timeout_min=5, signal_delay_s=300)


def test_a_sweep_resolves_the_delay_from_its_trials(tmp_path):
    spec = load_spec(spec_with(tmp_path, ""))
    assert trial_resources(spec, expand(spec)).signal_delay_s == 60  # resnet18: small
    spec = load_spec(spec_with(tmp_path, "signal_delay_s: 240\n"))
    assert trial_resources(spec, expand(spec)).signal_delay_s == 240


# ---------------------------------------------------------------- cluster profiles

PROFILES = """\
default: booster
profiles:
  booster:
    partition: booster
    account: proj123
    qos: normal
    timeout_min: 120
    setup: ["module load cuda/12.4"]
    env: {NCCL_SOCKET_IFNAME: ib0, OMP_NUM_THREADS: 4}
  small:
    account: proj9
"""


@pytest.fixture
def profiles(tmp_path, monkeypatch) -> Path:
    path = write(tmp_path, "clusters.yaml", PROFILES)
    monkeypatch.setenv(PROFILE_ENV, str(path))
    return path


def test_default_profile_merges_under_the_spec_with_provenance(tmp_path, profiles):
    path = spec_with(tmp_path, "setup: ['source /opt/venv/bin/activate']\nenv: {OMP_NUM_THREADS: 10}\n")
    spec = load_spec(path)
    r = spec.resources
    assert (r.profile, r.partition, r.account, r.qos) == ("booster", "booster", "proj123", "normal")
    assert r.timeout_min == 30  # the spec's own key wins
    assert r.setup == ["source /opt/venv/bin/activate"]  # lists are replaced whole
    assert r.env == {"NCCL_SOCKET_IFNAME": "ib0", "OMP_NUM_THREADS": "10"}  # mappings merge key by key
    sources = spec.resource_sources
    assert sources["account"] == f"{profiles}:5 (profile booster)"
    assert sources["env.NCCL_SOCKET_IFNAME"] == f"{profiles}:9 (profile booster)"
    assert sources["env.OMP_NUM_THREADS"] == f"{path}:10"
    assert sources["timeout_min"] == f"{path}:8"
    assert sources["profile"] == f"{profiles}:1 (default profile)"


def test_a_spec_or_override_picks_another_profile(tmp_path, profiles):
    spec = load_spec(spec_with(tmp_path, ""), ["resources.profile=small"])
    assert (spec.resources.account, spec.resources.partition) == ("proj9", None)
    assert spec.resource_sources["profile"].endswith("(-o resources.profile=small)")


def test_dry_run_shows_the_merged_resources_and_their_files(tmp_path, profiles):
    spec = spec_with(tmp_path, "")
    env = {**os.environ, "VITOLAUNCH_HOME": str(tmp_path / "home"), "PATH": str(tmp_path), PROFILE_ENV: str(profiles)}
    result = subprocess.run([sys.executable, "-m", "vitolaunch.cli", "sweep", str(spec), "--dry-run"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f'account = "proj123"  ({profiles}:5 (profile booster))' in out, out
    assert f"nodes = 2  ({spec}:7)" in out, out
    assert "#SBATCH --account=proj123" in out and "\nmodule load cuda/12.4\n" in out and "export NCCL_SOCKET_IFNAME=ib0" in out


def test_the_local_backend_says_which_site_settings_it_ignores(tmp_path, profiles):
    spec = write(tmp_path, "local.yaml", SPEC.replace("cluster: slurm", "cluster: local").replace("nodes: 2", "nodes: 1"))
    env = {**os.environ, "VITOLAUNCH_HOME": str(tmp_path / "home"), PROFILE_ENV: str(profiles)}
    result = subprocess.run([sys.executable, "-m", "vitolaunch.cli", "sweep", str(spec), "--dry-run"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "the local backend ignores resources.account, resources.qos, resources.setup, resources.partition" in result.stdout


PROFILE_ERRORS = {
    "unknown key": ("profiles:\n  a:\n    acount: x\n", 3, "profiles.a.acount", "Did you mean 'account'"),
    "bad value": ("profiles:\n  a:\n    nodes: zero\n", 3, "profiles.a.nodes", "valid integer"),
    "managed option": ("profiles:\n  a:\n    sbatch_extra: {signal: 'USR1@60'}\n", 3, "profiles.a.sbatch_extra.signal",
                       "resources.signal_delay_s"),
    "credential": ("profiles:\n  a:\n    env:\n      AWS_SECRET_ACCESS_KEY: abc123\n", 4, "profiles.a.env.AWS_SECRET_ACCESS_KEY",
                   "shell that runs vitolaunch"),
    "default names nothing": ("default: b\nprofiles:\n  a: {account: x}\n", 1, "default", "profiles: a"),
    "top-level typo": ("profile:\n  a: {}\n", 1, "profile", "Did you mean 'profiles'"),
    "nested profile": ("profiles:\n  a:\n    profile: b\n", 3, "profiles.a.profile", "do not name other profiles"),
    "duplicate profile": ("profiles:\n  a: {}\n  a: {}\n", 3, "profiles.a", "duplicate key"),
}


@pytest.mark.parametrize(("text", "line", "key", "expected"), PROFILE_ERRORS.values(), ids=PROFILE_ERRORS.keys())
def test_profile_file_errors_are_located_like_spec_errors(tmp_path, monkeypatch, text, line, key, expected):
    path = write(tmp_path, "clusters.yaml", text)
    monkeypatch.setenv(PROFILE_ENV, str(path))
    error = refused(spec_with(tmp_path, ""))
    message = str(error)
    assert message.startswith(f"{path}:{line}: key '{key}': "), message
    assert expected in message and "abc123" not in message


def test_a_missing_profile_is_an_error_at_the_spec_line(tmp_path, profiles, monkeypatch):
    error = refused(spec_with(tmp_path, "profile: boster\n"))
    assert error.line == 9 and error.key == "resources.profile"
    assert "no profile 'boster'" in str(error) and "Did you mean 'booster'" in str(error)
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "nope.yaml"))
    assert "cluster profile file does not exist" in str(refused(spec_with(tmp_path, "")))
    monkeypatch.setenv(PROFILE_ENV, "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no file there: fine, unless one is named
    assert load_spec(spec_with(tmp_path, "")).resources.account is None
    error = refused(spec_with(tmp_path, "profile: booster\n"))
    assert error.line == 9 and "there is no cluster profile file" in str(error) and "config/vitolaunch/clusters.yaml" in str(error)


def test_an_error_about_a_value_the_profile_gave_points_at_the_profile_line(tmp_path, monkeypatch):
    from vitolaunch.backends.local import LocalBackend
    from vitolaunch.launch.resource_check import check_resources

    path = write(tmp_path, "clusters.yaml", "default: big\nprofiles:\n  big:\n    nodes: 3\n    env: {OMP_NUM_THREADS: 4}\n")
    monkeypatch.setenv(PROFILE_ENV, str(path))
    spec = load_spec(write(tmp_path, "local.yaml", SPEC.replace("cluster: slurm", "cluster: local").replace("  nodes: 2\n", "")))
    with pytest.raises(SpecError) as refusal:
        check_resources(spec, LocalBackend())  # the combination is wrong: the profile's nodes on this one machine
    assert str(refusal.value).startswith(f"{path}:4: key 'resources.nodes': resources.nodes is 3"), str(refusal.value)
    # a value the spec itself gives is still located in the spec
    assert spec.error_at(("resources", "timeout_min"), "x").line == 7
    assert spec.error_at(("resources", "env", "OMP_NUM_THREADS"), "x").line == 5  # merged key by key from the profile


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "true", "False"])
def test_env_value_that_yaml_reads_as_a_boolean_is_refused_at_its_line(tmp_path, word):
    """`env: {X: yes}` exported X=1: YAML 1.1 made the word a boolean. The user meant the text: say to quote it."""
    error = refused(spec_with(tmp_path, f"env:\n  OMP_NUM_THREADS: 4\n  X: {word}\n"))
    text = str(error)
    assert error.line == 11 and error.key == "resources.env.X", text
    assert "quote the value" in text and "X: 'yes'" in text, text
    quoted = load_spec(spec_with(tmp_path, f"env:\n  X: '{word}'\n"))
    assert quoted.resources.env["X"] == word


def test_env_boolean_given_with_o_is_refused_at_the_option(tmp_path):
    text = str(refused(spec_with(tmp_path, ""), ("resources.env.X=on",)))
    assert "-o resources.env.X" in text and "quote the value" in text, text
