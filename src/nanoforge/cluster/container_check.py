"""`nanoforge container check`: validate an Apptainer definition file where no apptainer binary exists.

What a build on the cluster would trip over, found in seconds here:
- the header: `Bootstrap: docker` and a `From:` pinned to an exact version tag or a digest (never :latest);
- the sections parse, with `{{ NAME }}` template variables filled from %arguments as Apptainer does. spython's
  SingularityParser reads From, %files and %labels; our own parser reads what spython drops (the Bootstrap value,
  %arguments, %apprun, %apphelp, %help, and each section's exact text and line numbers);
- the apps train, chat, web, stage exist with %apprun and %apphelp, and each `nanoforge <command>` they run is a
  command of the real CLI (read from `nanoforge.cli.build_parser()`);
- the pins agree with pyproject.toml: torch (per extra), rustbpe, the image version label; Rust and maturin are
  exact versions;
- every shell section, and every shell script the image copies in with %files, passes `shellcheck`;
- the labels are complete and the %environment sets what the runtime relies on.

Each problem is one line naming the file, the section and the fix.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_SECTIONS = ("files", "post", "environment", "runscript", "test", "labels", "help")
REQUIRED_APPS = ("train", "chat", "web", "stage")
REQUIRED_LABELS = (
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.base.name",
    "org.nanoforge.torch",
)
# Set by %environment (directly or in a file it sources) because the runtime and the code rely on them.
REQUIRED_ENVIRONMENT = ("NANOFORGE_HOME", "OMP_NUM_THREADS", "PYTHONNOUSERSITE", "HF_HUB_OFFLINE", "PATH")

SECTIONS = {"setup", "files", "post", "environment", "runscript", "startscript", "test", "labels", "help",
            "arguments"}
APP_SECTIONS = {"appinstall", "appfiles", "appenv", "apprun", "applabels", "apphelp", "apptest", "appstart"}
SHELL_SECTIONS = {"setup", "post", "environment", "runscript", "startscript", "test",
                  "appinstall", "appenv", "apprun", "apptest", "appstart"}

_SECTION_LINE = re.compile(r"^%([A-Za-z]+)(?:\s+(\S+))?\s*$")
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*:\s*(.*?)\s*$")
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")
_NANOFORGE_COMMAND = re.compile(r"(?:^|[\s;|&(])nanoforge\s+([a-z][a-z0-9-]*)")


@dataclass
class Section:
    name: str
    app: str | None
    body: str
    first_line: int  # 1-based line of the body's first line in the file


@dataclass
class Definition:
    header: dict[str, str]
    sections: list[Section] = field(default_factory=list)

    def section(self, name: str, app: str | None = None) -> Section | None:
        return next((s for s in self.sections if s.name == name and s.app == app), None)

    def apps(self) -> set[str]:
        return {s.app for s in self.sections if s.app}


def parse_arguments(text: str) -> dict[str, str]:
    """%arguments defaults (NAME=value lines), read before templating like Apptainer does."""
    values: dict[str, str] = {}
    in_arguments = False
    for raw in text.splitlines():
        match = _SECTION_LINE.match(raw.strip())
        if match:
            in_arguments = match.group(1).lower() == "arguments"
            continue
        line = raw.strip()
        if in_arguments and line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip()
    return values


def render_template(text: str, values: dict[str, str]) -> tuple[str, list[str]]:
    """Fill `{{ NAME }}` from `values`; return the text and the names that have no value."""
    missing: list[str] = []

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            missing.append(name)
            return match.group(0)
        return values[name]

    return _TEMPLATE.sub(fill, text), sorted(set(missing))


def parse_definition(text: str) -> Definition:
    """Header lines (`Key: value`) up to the first %section, then sections with their exact bodies."""
    lines = text.splitlines()
    definition = Definition(header={})
    current: Section | None = None
    body: list[str] = []
    for number, raw in enumerate(lines, start=1):
        match = _SECTION_LINE.match(raw.strip()) if raw.strip().startswith("%") else None
        if match:
            if current is not None:
                current.body = "\n".join(body)
                definition.sections.append(current)
            current, body = Section(match.group(1).lower(), match.group(2), "", number + 1), []
        elif current is None:
            header = _HEADER_LINE.match(raw.strip())
            if header and not raw.strip().startswith("#"):
                definition.header[header.group(1).lower()] = header.group(2)
        else:
            body.append(raw)
    if current is not None:
        current.body = "\n".join(body)
        definition.sections.append(current)
    return definition


def cli_commands() -> set[str]:
    """The subcommands of the real `nanoforge` parser."""
    import argparse

    from nanoforge.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _dedent(body: str) -> str:
    lines = body.splitlines()
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents) if indents else 0
    return "\n".join(line[cut:] for line in lines)


def _shellcheck(text: str, shell: str, exclude: tuple[str, ...] = ()) -> list[dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        cmd = ["shellcheck", "--shell", shell, "--format", "json1"]
        if exclude:
            cmd += ["--exclude", ",".join(exclude)]
        result = subprocess.run(cmd + [path], capture_output=True, text=True)
    finally:
        Path(path).unlink(missing_ok=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(result.stderr.strip() or f"shellcheck exited with {result.returncode}")
    return json.loads(result.stdout or '{"comments": []}')["comments"]


def _section_title(section: Section) -> str:
    return f"%{section.name}" + (f" {section.app}" if section.app else "")


def _labels(spython_labels: list[str]) -> dict[str, str]:
    labels = {}
    for line in spython_labels:
        parts = line.strip().split(None, 1)
        if parts and not parts[0].startswith("#"):
            labels[parts[0]] = parts[1] if len(parts) > 1 else ""
    return labels


def _files(spython_files: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for line in spython_files:
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            pairs.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
    return pairs


def _host_path(image_path: str, files: list[tuple[str, str]], context: Path) -> Path | None:
    """Where a path inside the image comes from in the build context, via the %files mapping."""
    for source, dest in files:
        dest = dest.rstrip("/")
        if image_path == dest or image_path.startswith(dest + "/"):
            return context / source / image_path[len(dest):].lstrip("/")
    return None


def _pyproject_pins(pyproject: Path) -> tuple[str, dict[str, str], str]:
    """(project version, {extra: torch pin}, rustbpe requirement) from pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    data = tomllib.loads(pyproject.read_text())
    project = data.get("project", {})
    torch_pins = {}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for requirement in requirements:
            match = re.match(r"^torch\s*==\s*([^\s;,]+)", requirement)
            if match:
                torch_pins[extra] = match.group(1)
    rustbpe = next((r for r in project.get("dependencies", []) if re.match(r"^rustbpe\b", r)), "rustbpe")
    return project.get("version", ""), torch_pins, rustbpe


def check_definition(path: Path, *, context: Path, pyproject: Path, commands: set[str] | None = None) -> list[str]:
    """All problems in one definition file (empty when it is fine)."""
    from packaging.requirements import Requirement
    from spython.main.parse.parsers import SingularityParser

    name = str(path)
    problems: list[str] = []

    def problem(where: str, what: str, fix: str) -> None:
        problems.append(f"{name}: {where}: {what}; {fix}")

    try:
        raw = path.read_text()
    except OSError as exc:
        return [f"{name}: cannot read the file ({exc.strerror}); check the path"]

    text, missing_args = render_template(raw, parse_arguments(raw))
    for arg in missing_args:
        problem("%arguments", f"template variable {{{{ {arg} }}}} has no default",
                f"add `{arg}=<default>` to %arguments (builds without --build-arg need it)")
    definition = parse_definition(text)

    # spython reads From, %files and %labels; it needs a file, so it parses the templated text.
    with tempfile.NamedTemporaryFile("w", suffix=".def", delete=False) as f:
        f.write(text)
        rendered_path = f.name
    try:
        recipes = SingularityParser(rendered_path).recipe
        recipe = next(iter(recipes.values()))
    except Exception as exc:  # spython raises bare exceptions or exits on malformed files
        return problems + [f"{name}: spython cannot parse the file ({exc}); fix its header and section syntax"]
    finally:
        Path(rendered_path).unlink(missing_ok=True)

    # Header.
    bootstrap = definition.header.get("bootstrap", "")
    if bootstrap != "docker":
        problem("header", f"Bootstrap is {bootstrap or 'missing'!r}", "use `Bootstrap: docker`")
    base = definition.header.get("from", "")
    if not base or base != (recipe.fromHeader or ""):
        problem("header", f"From is {base or 'missing'!r} (spython reads {recipe.fromHeader!r})",
                "give one `From: <image>:<exact tag>` line")
    elif "@sha256:" not in base:
        tag = base.rsplit(":", 1)[1] if ":" in base.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest" or not _EXACT_VERSION.search(tag):
            problem("header", f"From {base!r} is not pinned",
                    "use an exact version tag (e.g. nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04) or an @sha256 digest")

    # Sections and apps.
    for section in definition.sections:
        known = SECTIONS if section.app is None else APP_SECTIONS
        if section.name not in known:
            problem(_section_title(section), "unknown section", "use one of the Apptainer section names")
        if section.name in APP_SECTIONS and section.app is None:
            problem(_section_title(section), "app section without an app name", f"write `%{section.name} <app>`")
    for required in REQUIRED_SECTIONS:
        if definition.section(required) is None:
            problem(f"%{required}", "section missing", f"add a %{required} section")
    for app in REQUIRED_APPS:
        for kind in ("apprun", "apphelp"):
            if definition.section(kind, app) is None:
                problem(f"%{kind} {app}", "missing", f"add `%{kind} {app}` (every image has the apps "
                        f"{', '.join(REQUIRED_APPS)})")

    # Commands the apps and the runscript run.
    if commands is not None:
        known_commands = ", ".join(sorted(commands))
        for section in definition.sections:
            if section.name != "apprun":
                continue
            used = _NANOFORGE_COMMAND.findall(section.body)
            if not used:
                problem(_section_title(section), "runs no `nanoforge <command>`", "exec the nanoforge command")
            for command in used:
                if command not in commands:
                    problem(_section_title(section), f"`nanoforge {command}` is not a nanoforge command "
                            f"(the CLI has: {known_commands})", "fix the app or add the command to the CLI")
    runscript = definition.section("runscript")
    if runscript is not None and "nanoforge" not in runscript.body:
        problem("%runscript", "does not dispatch to nanoforge", 'use `exec nanoforge "$@"`')

    # Pins against pyproject.toml.
    version, torch_pins, rustbpe_requirement = _pyproject_pins(pyproject)
    post = definition.section("post")
    post_text = post.body if post else ""
    extras = re.findall(r"--extra\s+([A-Za-z0-9_-]+)", post_text)
    torch_in_def = sorted(set(re.findall(r"\btorch==([^\s\"'\\]+)", post_text)))
    if len(extras) != 1:
        problem("%post", f"found {len(extras)} `--extra <name>` for install-nanoforge.sh",
                "install nanoforge once with --extra gpu or --extra cpu")
    if len(torch_in_def) != 1:
        problem("%post", f"found torch pins {torch_in_def or 'none'}", "pin torch once, as torch==<version>")
    if len(extras) == 1 and len(torch_in_def) == 1:
        extra, pinned = extras[0], torch_in_def[0]
        expected = torch_pins.get(extra)
        if expected is None:
            problem("%post", f"pyproject.toml has no torch pin in the extra {extra!r}",
                    f"add torch=={pinned} to [project.optional-dependencies] {extra}")
        elif pinned != expected:
            problem("%post", f"torch=={pinned} but pyproject.toml's extra {extra!r} pins torch=={expected}",
                    "make the two pins the same")
    rust = re.findall(r"--rust\s+(\S+)", post_text)
    if len(rust) != 1 or not re.fullmatch(r"\d+\.\d+\.\d+", rust[0]):
        problem("%post", f"Rust toolchain pin is {rust or 'missing'}", "pass one exact version: --rust X.Y.Z")
    for tool in ("maturin", "rustbpe"):
        pins = re.findall(rf"\b{tool}==([^\s\"'\\]+)", post_text)
        if len(pins) != 1:
            problem("%post", f"{tool} pin is {pins or 'missing'}", f"pin {tool} once as {tool}==<version>")
        elif tool == "rustbpe":
            requirement = Requirement(rustbpe_requirement)
            if not requirement.specifier.contains(pins[0], prereleases=True):
                problem("%post", f"rustbpe=={pins[0]} does not satisfy pyproject.toml's {rustbpe_requirement!r}",
                        "pin a rustbpe version the package accepts")

    # Labels.
    labels = _labels(recipe.labels)
    for label in REQUIRED_LABELS:
        if not labels.get(label):
            problem("%labels", f"label {label} is missing", f"add `{label} <value>`")
    if labels.get("org.opencontainers.image.version") and labels["org.opencontainers.image.version"] != version:
        problem("%labels", f"org.opencontainers.image.version is {labels['org.opencontainers.image.version']} "
                f"but pyproject.toml says {version}", "make them the same")
    if labels.get("org.opencontainers.image.base.name") and labels["org.opencontainers.image.base.name"] != base:
        problem("%labels", f"org.opencontainers.image.base.name is {labels['org.opencontainers.image.base.name']}"
                f" but From is {base}", "make them the same")
    torch_label = labels.get("org.nanoforge.torch", "")
    if torch_label and len(torch_in_def) == 1 and torch_label.split("+")[0] != torch_in_def[0]:
        problem("%labels", f"org.nanoforge.torch is {torch_label} but %post installs torch=={torch_in_def[0]}",
                "make them the same")

    # %files sources exist in the build context (the repository root).
    files = _files(recipe.files)
    for source, _ in files:
        if not (context / source).exists():
            problem("%files", f"{source} does not exist in the build context {context}",
                    "create it or fix the path (relative to the repository root)")

    # %environment, including the files it sources from the image.
    environment = definition.section("environment")
    env_text = environment.body if environment else ""
    for sourced in re.findall(r"^\s*(?:\.|source)\s+(\S+)", env_text, flags=re.M):
        host = _host_path(sourced.strip("\"'"), files, context)
        if host is None or not host.is_file():
            problem("%environment", f"sources {sourced}, which no %files entry provides",
                    "copy it in with %files or set the variables inline")
        else:
            env_text += "\n" + host.read_text()
    for var in REQUIRED_ENVIRONMENT:
        if not re.search(rf"\bexport\s+(?:[A-Z_]+=\S*\s+)*{var}=", env_text):
            problem("%environment", f"does not export {var}", f"export {var} (see containers/common/environment.sh)")
    if not re.search(r"\bexport\s+PATH=[\"']?/opt/venv/bin", env_text):
        problem("%environment", "PATH does not start with /opt/venv/bin", 'export PATH="/opt/venv/bin:$PATH"')

    # shellcheck: each shell section, then the scripts copied in.
    if shutil.which("shellcheck") is None:
        problem("shell sections", "shellcheck is not installed", "apt-get install shellcheck")
        return problems
    for section in definition.sections:
        if section.name not in SHELL_SECTIONS or not section.body.strip():
            continue
        # SC1091: files sourced from the image are checked on their own below.
        for comment in _shellcheck("#!/bin/sh\n" + _dedent(section.body) + "\n", "sh", exclude=("SC1091",)):
            line = section.first_line + comment["line"] - 2
            problem(f"{_section_title(section)} line {line}",
                    f"shellcheck SC{comment['code']} ({comment['level']}): {comment['message']}",
                    "fix the shell code")
    for source, _ in files:
        host = context / source
        scripts = sorted(host.rglob("*.sh")) if host.is_dir() else [host] if host.suffix == ".sh" else []
        for script in scripts:
            for comment in _shellcheck(script.read_text(), "sh"):
                problem(f"{script.relative_to(context)} line {comment['line']} (copied by %files)",
                        f"shellcheck SC{comment['code']} ({comment['level']}): {comment['message']}",
                        "fix the shell code")
    return problems


def summarize(path: Path, context: Path) -> str:
    """One OK line: base image, torch pin, apps and how much shell code was checked."""
    from spython.main.parse.parsers import SingularityParser

    raw = path.read_text()
    text, _ = render_template(raw, parse_arguments(raw))
    definition = parse_definition(text)
    post = definition.section("post")
    torch = re.findall(r"\btorch==(\S+)", post.body if post else "")
    shell = sum(1 for s in definition.sections if s.name in SHELL_SECTIONS and s.body.strip())
    scripts = 0
    for source, _ in _files(next(iter(SingularityParser(str(path)).recipe.values())).files):
        host = context / source
        scripts += len(list(host.rglob("*.sh"))) if host.is_dir() else int(host.suffix == ".sh")
    return (f"{path}: OK (From {definition.header.get('from')}, torch {torch[0] if torch else '?'}, "
            f"apps {', '.join(sorted(definition.apps()))}; shellcheck clean: {shell} sections, {scripts} scripts)")
