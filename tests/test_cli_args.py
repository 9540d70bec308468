"""The command line as README writes it (issue 31, items 2-4 and 7), through the real ``main``
in this process (tests/_cli.py):

- overrides on both sides of ``--resume``/``--overwrite`` (README's synopsis), in order;
- a bad argument (``eval --k 0``, ``data select --band 0.9 0.1``, ``bench --steps 0``, ...) is
  one usage line, exit 2, before any data or model is read;
- ``data synth``, ``data convert`` and ``demo`` refuse to replace what is there without
  ``--overwrite``; a quick demo has its own directory;
- ``data select`` with a text LM (SmolLM2, a Llama) scores text pools and refuses an image pool
  in one line;
- every option's help says what it is and its default; each converter names its input format.
"""
from __future__ import annotations

import argparse
import json

import pytest

from _cli import run_cli
from _trainer_util import make_data, tiny_overrides, write_config


def _one_error_line(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert "Traceback" not in res.stderr, res.stderr
    return lines[-1]


# ----------------------------------------------------------------- item 2: overrides
def test_overrides_on_both_sides_of_the_flags_keep_their_order():
    from mixed_r1.cli import parse_args

    args = parse_args(["train", "--config", "C", "out_dir=X", "--overwrite", "steps=1"])
    assert args.overwrite and args.overrides == ["out_dir=X", "steps=1"]
    args = parse_args(["train", "--config", "C", "steps=1", "--resume", "steps=2", "seed=3"])
    assert args.resume and args.overrides == ["steps=1", "steps=2", "seed=3"]
    args = parse_args(["bench", "steps=1", "--steps", "3", "seed=2", "--json"])
    assert (args.steps, args.json, args.overrides) == (3, True, ["steps=1", "seed=2"])


def test_an_override_after_overwrite_reaches_the_config(tmp_path):
    """README's synopsis ``train --config C out_dir=X --overwrite KEY=V``: the override after the
    flag is read (here a misspelt key, so the config names it and nothing trains)."""
    data = make_data(tmp_path / "data")
    cfg = write_config(tmp_path / "c.yaml", tiny_overrides(data, tmp_path / "run"))
    res = run_cli("train", "--config", str(cfg), f"out_dir={tmp_path / 'run2'}", "--overwrite",
                  "algo.ppo_epoch=2", cwd=tmp_path)
    assert _one_error_line(res).startswith(
        "error: command line: unknown config key 'algo.ppo_epoch'")
    res = run_cli("train", "--config", str(cfg), "--overwrite", "steps=1", "stray", "--resume",
                  cwd=tmp_path)
    assert "not allowed with argument --overwrite" in _one_error_line(res)


# ------------------------------------------------------- item 4: arguments before loading
@pytest.mark.parametrize("args, message", [
    (["eval", "--model", "M", "--data", "D", "--k", "0"], "argument --k: must be at least 1, got 0"),
    (["eval", "--model", "M", "--data", "D", "--temperature", "-1"],
     "argument --temperature: must be in [0, 100], got -1"),
    (["eval", "--model", "M", "--data", "D", "--max-new-tokens", "0"],
     "argument --max-new-tokens: must be at least 1, got 0"),
    (["bench", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["data", "select", "--pool", "P", "--out", "O", "--band", "0.9", "0.1"],
     "error: --band: LO must not exceed HI, got 0.9 0.1"),
    (["data", "select", "--pool", "P", "--out", "O", "--band", "0.5", "0.5"],
     "error: --band 0.5 0.5 is empty as an open band (LO < p < HI); pass --closed-band to keep "
     "pass rate == 0.5"),
    (["data", "select", "--pool", "P", "--out", "O", "--band", "0", "nan"],
     "argument --band: must be in [0, 1], got nan"),
    (["data", "select", "--pool", "P", "--out", "O", "--k", "0"],
     "argument --k: must be at least 1, got 0"),
    (["data", "select", "--pool", "P", "--out", "O", "--top-p", "0"],
     "argument --top-p: must be in (0, 1], got 0"),
    (["data", "synth", "--out", "O", "--per-task", "-1"],
     "argument --per-task: must be at least 0, got -1"),
])
def test_bad_arguments_are_one_line_before_anything_loads(args, message, tmp_path):
    """The paths named (M, D, P) do not exist: the argument is refused first."""
    line = _one_error_line(run_cli(*args, cwd=tmp_path))
    assert line.endswith(message), line
    assert not (tmp_path / "O").exists()


# ---------------------------------------------------------------- item 3: overwrite rules
def test_data_synth_refuses_a_non_empty_out_and_overwrite_replaces_it_whole(tmp_path):
    out = tmp_path / "set"
    res = run_cli("data", "synth", "--out", str(out), "--per-task", "0", "--size", "yes_no=6",
                  "--size", "chart=4", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    line = _one_error_line(run_cli("data", "synth", "--out", str(out), "--per-task", "0",
                                   "--size", "yes_no=1", cwd=tmp_path))
    assert line == f"error: {out} already exists and is not empty (pass --overwrite to replace it)"
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before

    res = run_cli("data", "synth", "--out", str(out), "--per-task", "0", "--size", "yes_no=1",
                  "--overwrite", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in (out / "synth.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    images = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*")
                    if p.is_file())
    assert images == sorted(i for r in rows for i in r["images"])  # no orphans of the old set
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_text_synth_and_convert_refuse_to_replace_a_file(tmp_path):
    out = tmp_path / "text"
    args = ("data", "synth", "--text", "--out", str(out), "--per-task", "2")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    first = (out / "text.jsonl").read_bytes()
    line = _one_error_line(run_cli(*args, "--seed", "1", cwd=tmp_path))
    assert line == (f"error: {out / 'text.jsonl'} already exists (pass --overwrite to replace "
                    "it)")
    assert (out / "text.jsonl").read_bytes() == first
    assert run_cli(*args, "--seed", "1", "--overwrite", cwd=tmp_path).returncode == 0
    assert (out / "text.jsonl").read_bytes() != first

    src = tmp_path / "math.jsonl"
    src.write_text(json.dumps({"problem": "1+1?", "answer": "#### 2"}) + "\n")
    dst = tmp_path / "converted.jsonl"
    dst.write_text("mine\n")
    line = _one_error_line(run_cli("data", "convert", "math", "--input", str(src), "--out",
                                   str(dst), cwd=tmp_path))
    assert line == f"error: --out {dst} already exists (pass --overwrite to replace it)"
    assert dst.read_text() == "mine\n"
    assert run_cli("data", "convert", "math", "--input", str(src), "--out", str(dst),
                   "--overwrite", cwd=tmp_path).returncode == 0
    assert json.loads(dst.read_text())["solution"] == "2"


def test_demo_quick_has_its_own_directory_and_a_demo_refuses_results(tmp_path):
    """``demo --quick`` no longer writes into runs/demo; a directory with an earlier demo's
    results is refused (nothing deleted) and ``--overwrite`` deletes only what a demo writes."""
    from mixed_r1.cli.demo import default_out, prepare_out

    assert {default_out(m, q) for m in (False, True) for q in (False, True)} == {
        "runs/demo", "runs/demo_quick", "runs/demo_multimodal", "runs/demo_multimodal_quick"}
    out = tmp_path / "demo"
    (out / "hf").mkdir(parents=True)
    prepare_out(out, overwrite=False)  # only the conversion cache: allowed, kept
    (out / "run").mkdir()
    (out / "run" / "metrics.jsonl").write_text("{}\n")
    (out / "report.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    line = _one_error_line(run_cli("demo", "--out", str(out), cwd=tmp_path))
    assert line == (f"error: --out {out} is not empty (notes.txt, report.json, run); pass "
                    "--overwrite to replace an earlier demo's results there, or --out elsewhere")
    assert (out / "report.json").exists() and (out / "run" / "metrics.jsonl").exists()
    prepare_out(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["hf", "notes.txt"]


# ------------------------------------------------------------- item 4: data select text LM
@pytest.mark.slow
def test_data_select_with_a_text_lm(tmp_path):
    """A Llama checkpoint with SmolLM2's tokenizer and chat template as ``--policy`` (the issue's
    case: a Qwen2.5-VL load report, then IndexError): a text pool is scored and selected; an image
    pool is refused in one line naming the file and the first image sample, before the weights
    load. (Small random weights: what is under test is the path, as with SmolLM2-135M itself.)"""
    from _trainer_util import tiny_text_lm_dir

    model = tiny_text_lm_dir(tmp_path / "llama")
    text = tmp_path / "text"
    assert run_cli("data", "synth", "--text", "--out", str(text), "--per-task", "1",
                   cwd=tmp_path).returncode == 0
    res = run_cli("data", "select", "--pool", str(text / "text.jsonl"), "--out",
                  str(tmp_path / "sel"), "--policy", str(model), "--k", "2",
                  "--max-new-tokens", "8", "--band", "0", "1", "--closed-band", "--threads", "1",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.splitlines()[-1])
    scores = [json.loads(x) for x in
              (tmp_path / "sel" / "state" / "scores.jsonl").read_text().splitlines()]
    scores = [r for r in scores if "id" in r]  # not the chunk_done markers
    assert sorted(r["id"] for r in scores) == sorted(
        json.loads(x)["id"] for x in (text / "text.jsonl").read_text().splitlines())
    assert all(r["k"] == 2 and len(r["accuracy"]) == 2 for r in scores)
    assert sum(summary["selected_per_task"].values()) == len(scores)  # closed [0, 1]: all kept

    images = make_data(tmp_path / "images")
    rows = [json.loads(x) for x in images.read_text().splitlines()]
    with_images = [r["id"] for r in rows if r.get("images")]
    first, k, n = with_images[0], len(with_images), len(rows)
    line = _one_error_line(run_cli("data", "select", "--pool", str(images), "--out",
                                   str(tmp_path / "sel2"), "--policy", str(model),
                                   cwd=tmp_path))
    assert line == (f"error: {images}, key 'images': {k} of {n} samples have images (first: id "
                    f"'{first}'), but --policy {model} is a text-only LM; give text pools "
                    "(mixed-r1 data synth --text) or --on-error skip")
    assert not (tmp_path / "sel2").exists()


# ------------------------------------------------------------------------ item 7: help
def _parsers(parser: argparse.ArgumentParser, name: str = "mixed-r1"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _parsers(p, f"{name} {sub}")


def test_every_option_says_what_it_is_and_its_default():
    from mixed_r1.cli import build_parser

    missing = []
    for name, parser in _parsers(build_parser()):
        for a in parser._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            flag = f"{name} {a.option_strings[0] if a.option_strings else a.dest}"
            if not a.help:
                missing.append(f"{flag}: no help")
            elif (a.option_strings and not isinstance(a, argparse._StoreTrueAction)
                  and a.default not in (None, False) and "default" not in a.help):
                missing.append(f"{flag}: default {a.default!r} unsaid")
    assert missing == []


def test_convert_help_names_each_input_format():
    res = run_cli("data", "convert", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for kind, fields in {"llava": "conversations", "chartqa": "imgname, query, label",
                         "refcoco": "bbox", "math": "problem"}.items():
        assert f"{kind} " in text and fields in text, kind
    assert "(default: xywh)" in text and "(default: pixel)" in text
    res = run_cli("eval", "--help")
    assert "(default: 64)" in " ".join(res.stdout.split())


# ------------------------------------------------------------------------ item 5: umask
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_data_files_respect_the_umask(umask, tmp_path):
    """A synthesized set (directory renamed into place) and a converted file (a temporary
    renamed into place) get the modes ``open``/``mkdir`` give under the umask."""
    import os

    old = os.umask(umask)
    try:
        out = tmp_path / "set"
        assert run_cli("data", "synth", "--out", str(out), "--per-task", "0", "--size",
                       "yes_no=1", cwd=tmp_path).returncode == 0
        src = tmp_path / "math.jsonl"
        src.write_text(json.dumps({"problem": "1+1?", "answer": "#### 2"}) + "\n")
        assert run_cli("data", "convert", "math", "--input", str(src), "--out",
                       str(tmp_path / "m.jsonl"), cwd=tmp_path).returncode == 0
    finally:
        os.umask(old)
    for p in [out, *out.rglob("*"), tmp_path / "m.jsonl"]:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert oct(p.stat().st_mode & 0o777) == oct(want), p


def test_library_progress_bars_are_off_in_a_log_only(monkeypatch):
    """Off a terminal the CLI turns off the tqdm bars of transformers / the GGUF reader /
    huggingface_hub (a log got 'Loading weights: 0%|...' carriage-return lines); on a terminal,
    or when the user chose, it leaves them alone."""
    import io

    from mixed_r1.cli import quiet_progress_bars

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)
    assert quiet_progress_bars(Tty()) is False
    assert "TQDM_DISABLE" not in __import__("os").environ
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user's choice stays
    assert quiet_progress_bars(io.StringIO()) is True
    import os

    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"


def test_convert_refuses_a_non_empty_out_and_overwrite_replaces_it(tmp_path):
    """``convert hf-to-mcore`` (like mcore-to-hf and reshard) into a non-empty directory: one
    line that names it and the flag, nothing changed; ``--overwrite`` replaces it."""
    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    hf = tmp_path / "hf"
    build_tiny_qwen25vl(seed=0).save_pretrained(str(hf), safe_serialization=True)
    out = tmp_path / "mc"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    line = _one_error_line(run_cli("convert", "hf-to-mcore", "--hf", str(hf), "--out", str(out),
                                   cwd=tmp_path))
    assert line == (f"error: output {out} already exists and is not empty (pass --overwrite to "
                    "replace it)")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    res = run_cli("convert", "hf-to-mcore", "--hf", str(hf), "--out", str(out), "--overwrite",
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (out / "manifest.json").is_file() and not (out / "mine.txt").exists()
