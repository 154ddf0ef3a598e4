"""Every code example a newcomer is shown runs as written.

- the fenced ```python blocks of the READMEs and the indented code examples of the public
  modules' docstrings are executed, each in a fresh temporary folder where ``examples/`` is the
  project's (the READMEs' paths are relative to the repository root), offline, with no default
  model (``MASACTRL_MODEL`` unset, as for a user outside a deployment). The examples are written
  to be cheap as shown (the tiny checkpoint, 64x64, a few steps; a comment says what to change
  for real pictures). Only masactrl_engine/FAMILIES.md shows real SDXL checkpoints and LoRAs: its
  blocks run with the explicit replacements of ``SUBSTITUTIONS``;
- every job file in ``examples/jobs/`` validates where it lies (its source pictures ship beside
  it); those naming a real checkpoint are validated with the offline overrides their own comments
  give (``OFFLINE`` below);
- the README's job file is the example job it says it is, the pose spec examples validate, and
  every ``examples/...`` path and ``masactrl-animate`` command the docs name exists.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = [ROOT / "README.md", ROOT / "pose_sources" / "README.md", ROOT / "deploy" / "README.md",
        ROOT / "masactrl_engine" / "FAMILIES.md"]
# Packages whose module docstring (``__init__.py``) may show Python code.
DOCSTRING_MODULES = [ROOT / "flows" / "__init__.py", ROOT / "masactrl_engine" / "__init__.py",
                     ROOT / "pose_sources" / "__init__.py"]
# Example jobs that name real checkpoints (hub ids): offline they run on the tiny model of their
# family with these overrides, which their comments show (checked below).
OFFLINE = {
    "sd15_walk.yaml": ["model.model=tiny", "model.controlnet=tiny"],
    "sdxl_walk.yaml": ["model.model=tiny-sdxl", "model.controlnet=tiny"],
    "turbo_prompts.yaml": ["model.model=tiny-sdxl-turbo"],
}
# Blocks kept as the reader sees them although they name real checkpoints and the reader's own
# variables (masactrl_engine/FAMILIES.md shows the family helpers on a real SDXL): what is replaced
# before running them, in order. TINY_SDXL is the path of the tiny SDXL checkpoint; the LoRA files
# they name are written into the working folder first (``user_files``).
SUBSTITUTIONS = {
    "masactrl_engine/FAMILIES.md": [
        ('"path/or/hub-id"', "TINY_SDXL"),
        ('"stabilityai/stable-diffusion-xl-base-1.0"', "TINY_SDXL"),
        ("check_loras(model, loras)", 'check_loras(TINY_SDXL, [("styles/ink.safetensors", 0.8)])'),
    ],
}
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[ ]*\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)


def fenced_blocks(path: Path, langs: set[str]) -> list[tuple[str, str]]:
    """(``file:line``, code) of the fenced blocks of ``path`` in one of ``langs`` ("" = no language)."""
    text = path.read_text()
    return [(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", textwrap.dedent(m["body"]))
            for m in FENCE.finditer(text) if m["lang"] in langs]


def docstring_blocks(path: Path) -> list[tuple[str, str]]:
    """(``file:docstring[i]``, code) of the indented blocks (or ``>>>`` examples) of a module docstring."""
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""  # module level: not indented
    blocks, current = [], []
    for line in doc.splitlines():
        if line.startswith("    ") or line.lstrip().startswith(">>>") or (current and not line.strip()):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    out = []
    for i, lines in enumerate(blocks):
        code = textwrap.dedent("\n".join(lines)).strip("\n")
        if code.lstrip().startswith(">>>"):
            code = "\n".join(l[4:] for l in code.splitlines() if l.startswith((">>> ", "... ")))
        out.append((f"{path.relative_to(ROOT)}:docstring[{i}]", code + "\n"))
    return out


PYTHON_BLOCKS = [block for doc in DOCS for block in fenced_blocks(doc, {"python", "py"})]
PYTHON_BLOCKS += [block for module in DOCSTRING_MODULES for block in docstring_blocks(module)]


def test_the_docs_have_python_examples():
    names = [name for name, _ in PYTHON_BLOCKS]
    assert any(n.startswith("README.md:") for n in names), names
    assert any(n.startswith("flows/__init__.py:") for n in names), names
    for name, code in PYTHON_BLOCKS:
        compile(code, name, "exec")  # every one is Python (a shell line would be a SyntaxError)
    for doc, pairs in SUBSTITUTIONS.items():  # no stale replacement: each still finds its text
        text = (ROOT / doc).read_text()
        assert all(old in text for old, _ in pairs), doc


@pytest.fixture
def docs_cwd(tmp_path, monkeypatch, tiny_checkpoint):
    """A fresh working folder where ``examples/`` is the project's, no default model, the tiny
    checkpoint of this session for ``model: tiny``."""
    (tmp_path / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MASACTRL_MODEL", raising=False)
    monkeypatch.setenv("MASACTRL_TINY_DIR", str(tiny_checkpoint))
    return tmp_path


def user_files(code: str, folder: Path, tiny_sdxl: Path) -> None:
    """The files an example takes as the reader's own (LoRAs), made for the tiny SDXL."""
    from masactrl_engine.tiny.lora import make_tiny_lora

    if "styles/ink.safetensors" in code:
        make_tiny_lora(folder / "styles" / "ink.safetensors", tiny_sdxl, seed=1)
    if '"some-user/some-lora"' in code:  # a hub id; a local folder of that name stands in for it
        make_tiny_lora(folder / "some-user" / "some-lora" / "pytorch_lora_weights.safetensors", tiny_sdxl, seed=2)


def runs_a_flow(code: str) -> bool:
    return re.search(r"\banimate\(", code) is not None


# A flow run needs a Prefect API (the session's test server, ~30 s to start alone): those are slow.
@pytest.mark.parametrize("name, code", [
    pytest.param(name, code, id=name, marks=[pytest.mark.slow] if runs_a_flow(code) else [])
    for name, code in PYTHON_BLOCKS])
def test_python_example_runs(name, code, docs_cwd, request, tiny_family_checkpoint):
    namespace = {"__name__": "__docs__"}
    for old, new in SUBSTITUTIONS.get(name.split(":")[0], []):
        code = code.replace(old, new)
    if "TINY_SDXL" in code:
        namespace["TINY_SDXL"] = str(tiny_family_checkpoint("sdxl"))
        user_files(code, docs_cwd, tiny_family_checkpoint("sdxl"))
    if runs_a_flow(code):
        request.getfixturevalue("prefect_harness")
    exec(compile(code, name, "exec"), namespace)
    assert not (EXAMPLES / "out").exists() and not (EXAMPLES / "cache").exists(), "an example wrote into examples/"


def example_jobs() -> list[Path]:
    return sorted((EXAMPLES / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("job", example_jobs(), ids=lambda p: p.name)
def test_example_job_validates_where_it_lies(job, docs_cwd, capsys):
    """``masactrl-animate validate examples/jobs/X.yaml`` as a newcomer types it after ``make setup``."""
    from flows.cli import EXIT_OK, main

    overrides = OFFLINE.get(job.name, [])
    text = job.read_text()
    for override in overrides:  # the job file tells how to run it offline
        assert f"--set {override}" in text, f"{job.name}: its comments should show --set {override}"
    if not overrides:
        assert yaml.safe_load(text)["model"]["model"].startswith("tiny"), \
            f"{job.name} names a real checkpoint: add its offline overrides to OFFLINE and to its comments"
    argv = ["validate", str(job.relative_to(ROOT)), "--no-progress"]  # examples/jobs/X.yaml
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == EXIT_OK, capsys.readouterr()


def test_readme_job_file_is_the_example_job_and_validates(docs_cwd, capsys):
    """The README's job file is ``examples/jobs/astronaut_walk.yaml`` (same fields), and valid."""
    from flows.cli import EXIT_OK, main

    [(name, block)] = [b for b in fenced_blocks(ROOT / "README.md", {"yaml"}) if "name: astronaut-walk" in b[1]]
    path = block.splitlines()[0].lstrip("# ").strip()
    assert yaml.safe_load(block) == yaml.safe_load((ROOT / path).read_text()), f"{name} differs from {path}"
    assert main(["validate", str(ROOT / path), "--no-progress"]) == EXIT_OK, capsys.readouterr()


def test_pose_spec_examples_validate():
    from pose_sources import PoseSpecAdapter

    [(name, block)] = fenced_blocks(ROOT / "pose_sources" / "README.md", {"json"})
    specs = [json.loads(line) for line in block.splitlines() if line.strip()]
    assert len(specs) >= 5
    for spec in specs:  # the files they name are the user's: only the fields are checked
        PoseSpecAdapter.validate_python(spec, context={"check_paths": False})


def test_paths_and_commands_the_docs_name_exist():
    """Every ``examples/...`` path in the docs and the job files' comments exists; every
    ``masactrl-animate COMMAND`` is a command of the CLI."""
    from flows.cli import build_parser

    texts = {doc: doc.read_text() for doc in DOCS + example_jobs()}
    texts.update({m: ast.get_docstring(ast.parse(m.read_text())) or "" for m in DOCSTRING_MODULES})
    commands = set(next(a for a in build_parser()._actions if a.choices).choices)
    for doc, text in texts.items():
        for ref in re.findall(r"(?<![\w/])(?:\.\./)*(examples/[\w./-]*[\w/])", text):
            assert (ROOT / ref).exists(), f"{doc.relative_to(ROOT)} names {ref}, which does not exist"
        if doc.parent == EXAMPLES / "jobs":
            for ref in re.findall(r"^\s*(?:image|path): (\S+)", text, re.M):
                assert (doc.parent / ref).exists(), f"{doc.name}: {ref} does not exist"
        for command in re.findall(r"masactrl-animate (\w[\w-]*)", text):
            assert command in commands, f"{doc.relative_to(ROOT)}: masactrl-animate {command} is no command"
