"""The README's commands, run as written on the bundled demo data, so a README command cannot silently break; and
every relative link of the README and docs/ resolving.

Every command line of every ```bash block of the README and of the docs pages its details moved to
(COMMAND_PAGES) is run, in that order, in a scratch folder holding a link to
data/ (so relative paths such as runs/demo resolve as they do for a user in the repository). `.venv/bin/python`
and `python` mean this interpreter, `torchrun` its torch.distributed.run, `make demo` the Makefile's own recipe.
A command is left out only when the demo data cannot serve it, and SPECIAL says why; a new README command runs
by default. The Python API block runs too, after `make demo` made runs/demo."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (pattern found in the command, what to do): "skip: <why>", "append: <overrides>" (long trainings run shortened)
# or "substitute" (a user's corpus paths stand for the demo data: SUBSTITUTIONS).
SPECIAL = [
    ("make test", "skip: the test suite itself"),
    ("/corpora/", "substitute"),
    ("/models/", "substitute"),
    ("compare_quantizers.py", "skip: a 25-minute benchmark of seven trainings (run by hand; README table)"),
    (
        "experiment=hubert_demo",
        "append: train_encoder.steps=4 train_encoder.batch_size=2 train_encoder.segment_s=1.0 "
        "train_encoder.checkpoint_every=2 train_encoder.validate_every=2",
    ),
    (
        "experiment=hubert_iteration",
        "append: iteration.count=2 iteration.train_data=data/demo train_encoder.steps=4 train_encoder.batch_size=2 "
        "train_encoder.segment_s=1.0 train_encoder.checkpoint_every=2 train_encoder.validate_every=2",
    ),
    (
        "experiment=contrastive_demo",
        "append: train_encoder.data_path=data/demo train_encoder.steps=4 train_encoder.batch_size=2 "
        "train_encoder.segment_s=1.0 train_encoder.checkpoint_every=2 train_encoder.validate_every=2 "
        "train_encoder.keep_snapshots=true",
    ),
    (
        "experiment=encoder_demo",
        "append: train_encoder.steps=6 train_encoder.checkpoint_every=3 train_encoder.validate_every=3",
    ),
]


# The evaluate extras (ABX, robustness, resynthesis) are run and checked by make demo and their own tests; the other
# README commands skip them so the suite stays short.
QUICK_EVALUATE = ["evaluate.abx.enabled=false", "evaluate.robustness.num_files=0", "evaluate.resynthesize=0"]

SUBSTITUTIONS = {
    "/corpora/LibriSpeech/train-clean-100": "data/demo",  # a folder of audio
    "/corpora/dev.tsv": "runs/demo/train.tsv",  # a fairseq manifest (the one make demo wrote)
    "device=cuda": "device=auto",  # CUDA where the test machine has it
    "/models/hubert-base-ls960": "checkpoints/hubert-tiny",  # a Hugging Face folder: tiny_hubert_folder makes one
}


def tiny_hubert_folder(folder: Path) -> None:
    """A randomly initialised HuBERT in Hugging Face's layout with the real conv front end (20 ms frames) and a
    small Transformer, standing for the user's downloaded hubert-base-ls960."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64, conv_dim=[32] * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    transformers.HubertModel(config).save_pretrained(folder)


# The pages whose commands run, in this order: the README's first (make demo makes runs/demo), then the docs pages
# that hold the details the README links to.
COMMAND_PAGES = ["README.md", "docs/learned_units.md", "docs/SCALING.md"]


def page_commands() -> list[str]:
    return [command for page in COMMAND_PAGES for command in shell_commands((REPO / page).read_text())]


def shell_commands(markdown: str) -> list[str]:
    """The command lines of the ```bash blocks: comments dropped, backslash continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                commands.append(" ".join(line.split()))
    return commands


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def make_recipe(target: str) -> str:
    lines = (REPO / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{target}:")))
    recipe = [line.strip() for line in lines[start + 1 :] if line.startswith("\t")]
    return recipe[0]


def to_argv(command: str) -> list[str]:
    if command == "make demo":
        command = make_recipe("demo")
    argv = shlex.split(command.replace("$(BIN)/python", ".venv/bin/python"))
    if argv[0] in (".venv/bin/python", "python", "python3"):
        argv[0] = sys.executable
    elif argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    else:
        raise AssertionError(f"README command with an unknown program: {command!r}")
    return argv


def action(command: str) -> str:
    return next((what for pattern, what in SPECIAL if pattern in command), "run")


def test_readme_lists_its_commands():
    readme = shell_commands((REPO / "README.md").read_text())
    assert readme[:2] == ["make demo", "make test"]
    commands = page_commands()
    assert any("hydra/launcher=joblib" in c for c in commands) and any("stages=[merge]" in c for c in commands)


def test_every_docs_page_with_commands_is_run():
    """A docs page that gains a ```bash block joins COMMAND_PAGES, or its commands would go untested."""
    with_commands = {str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md") if shell_commands(p.read_text())}
    assert with_commands <= set(COMMAND_PAGES)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def relative_links(markdown: str) -> list[str]:
    """Targets of the page's [text](target) links and images that are neither URLs nor mail addresses."""
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", markdown, flags=re.S))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    text, broken = page.read_text(), []
    for target in relative_links(text):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            broken.append(target)
    return broken


def test_every_relative_link_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    assert sum(len(relative_links(p.read_text())) for p in pages) > 20, "the links were not read"
    broken = {str(p.relative_to(REPO)): broken_links(p) for p in pages}
    assert {page: links for page, links in broken.items() if links} == {}


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with punctuation!\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md) [ok](there.md#a-heading-with-punctuation) [web](https://example.org/x) "
                    "[gone](missing.md) [bad anchor](there.md#nowhere) ![img](pic.png)\n")  # fmt: skip
    assert broken_links(page) == ["missing.md", "there.md#nowhere", "pic.png"]


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    (tmp_path / "data").symlink_to(REPO / "data")
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    tiny_hubert_folder(tmp_path / "checkpoints" / "hubert-tiny")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ran, skipped = [], []
    for command in page_commands():
        what = action(command)
        if what.startswith("skip:"):
            skipped.append(f"{command}  ({what[5:].strip()})")
            continue
        if what == "substitute":
            for old, new in SUBSTITUTIONS.items():
                command = command.replace(old, new)
            assert "/corpora/" not in command, command
        argv = to_argv(command)
        if what.startswith("append:"):
            argv += what[7:].split()
        if "speechvq.run" in argv and not command.startswith("make demo"):
            argv += QUICK_EVALUATE  # make demo runs the full evaluate; the others keep the suite short
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README command failed: {command}\n{done.stderr[-3000:]}"
        ran.append(command)
    print("ran:", *ran, "left out:", *skipped, sep="\n  ")
    assert any(c.startswith("make demo") for c in ran)
    # The demo's robustness figures worsen as the SNR falls; ABX is computed on features and units.
    import json

    demo = json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())
    drift = demo["robustness"]
    assert drift["noise_10db"]["unit_edit_distance"] > drift["noise_20db"]["unit_edit_distance"]
    assert set(demo["abx"]) == {"features", "units"} and demo["abx"]["units"]["within_speaker_error"] < 0.5
    # What the README claims of the 8-shard run: merged, it is byte-identical to the single run.
    merged = tmp_path / "runs" / "demo8-merged" / "train.km"
    assert merged.read_bytes() == (tmp_path / "runs" / "demo" / "train.km").read_bytes()
    assert len(list((tmp_path / "multirun" / "demo8").glob("*/units.meta.json"))) == 8
    # The codebook applied to another dataset (the demo's own manifest under another split name): same units.
    assert (tmp_path / "runs" / "ls100-dev" / "valid.km").read_bytes() == (
        tmp_path / "runs" / "ls100" / "train.km"
    ).read_bytes()
    # The Python API block, against the demo run the commands above made.
    for code in python_blocks(readme):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"README Python block failed:\n{code}\n{done.stderr[-3000:]}"
