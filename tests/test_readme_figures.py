"""benchmarks/readme_figures.py: the README's benchmark figures against what each benchmark's newest run printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_figures  # noqa: E402

README = """\
| job | command | plain HF | llmkit | ratio | quality |
| --- | --- | --- | --- | --- | --- |
| NER, MiniLM-L6, 4x256, top 5 | `python benchmarks/ner.py --seeds 3` | 55.8 ex/s | 1,380 MB, 2.54x | 1.35 GB | F1 0.789 |
| cold start | (same run) | 4.97 s | 12 ms | | |
| not a benchmark row | `llmkit pretrain` | 1.5 s | | | |
"""
PRINTED = "train examples/s  136  55.8  2.54x\npeak memory MB  1,380  1,383\nF1 0.7891 cold 4.974 s, 12.3 ms\n"


def write(folder: Path, name: str, payload: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(payload), encoding="utf-8")


def test_rows_with_a_benchmark_command_and_their_figures():
    rows = readme_figures.rows(README)
    assert [(name, args) for name, args, _ in rows] == [("ner", "--seeds 3"), ("ner", "--seeds 3")]
    assert readme_figures.figures(rows[0][2]) == ["55.8", "1,380", "2.54", "1.35", "0.789"]  # not 4x256, top 5


def test_every_figure_must_be_printed_by_the_newest_run_of_that_command(tmp_path):
    results = tmp_path / "results"
    assert readme_figures.check(README, results)[0].startswith("NO RESULT  python benchmarks/ner.py --seeds 3")
    write(results, "ner-20261201-000000.json", {"script": "ner", "argv": ["--seeds", "3"],
                                                "printed": PRINTED})
    write(results, "ner-20261202-000000.json", {"script": "ner", "argv": ["--seeds", "1"],
                                                "printed": ""})  # another command
    lines = readme_figures.check(README, results)
    assert lines == ["ok         python benchmarks/ner.py --seeds 3: 5 figures in ner-20261201-000000.json (commit ?)",
                     "ok         python benchmarks/ner.py --seeds 3: 2 figures in ner-20261201-000000.json (commit ?)"]
    write(results, "ner-20261203-000000.json", {"script": "ner", "argv": ["--seeds", "3", "--model", "/tmp/x"],
                                                "commit": "abc1234",
                                                "printed": PRINTED.replace("55.8", "55.9")})
    lines = readme_figures.check(README, results)
    assert lines[0] == ("MISSING    python benchmarks/ner.py --seeds 3: 55.8 not printed by ner-20261203-000000.json "
                        "(commit abc1234)")
    (tmp_path / "README.md").write_text(README, encoding="utf-8")
    assert readme_figures.main(["--readme", str(tmp_path / "README.md"), "--results", str(results)]) == 1


def test_every_readme_command_names_a_benchmark_script():
    rows = readme_figures.rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(rows) >= 10
    for name, _, _ in rows:
        assert (ROOT / "benchmarks" / f"{name}.py").exists(), name
