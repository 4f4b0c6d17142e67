"""`llmkit fill-mask` against `pipeline("fill-mask")` on the same tiny real model, through the API and the real CLI."""

from __future__ import annotations

import json
import math

import pytest

from conftest import WORDS, run_cli, toy_corpus

import llmkit
from llmkit import fillmask as fm
from llmkit.errors import ConfigError, DataError, ModelError

TOL = 1e-5


@pytest.fixture(scope="module")
def pipe(tiny_mlm):
    from transformers import pipeline

    return pipeline("fill-mask", model=str(tiny_mlm), device="cpu")


@pytest.fixture(scope="module")
def filler(tiny_mlm):
    return fm.load(tiny_mlm, device="cpu", precision="fp32")


def masked(line: str, at: int) -> str:
    words = line.split()
    words[at] = "[MASK]"
    return " ".join(words)


def single_mask_texts() -> list[str]:
    """Texts of different lengths with the mask at different places (so batches sort and pad them)."""
    lines = toy_corpus(12)
    return [masked(line, i % len(line.split())) for i, line in enumerate(lines)] + ["[MASK] alpha", "alpha [MASK]"]


def assert_same_candidates(ours: list[dict], theirs: list[dict]) -> None:
    assert [c["token_id"] for c in ours] == [c["token"] for c in theirs]
    assert [c["token"] for c in ours] == [c["token_str"] for c in theirs]
    assert [c["sequence"] for c in ours] == [c["sequence"] for c in theirs]
    for a, b in zip(ours, theirs):
        assert abs(a["score"] - b["score"]) < TOL


# ---------------------------------------------------------------- the Python API


def test_single_mask_matches_pipeline_across_batches(filler, pipe):
    texts = single_mask_texts()
    results = fm.fill_mask(filler, texts, top_k=5, batch_size=3)
    assert [r["text"] for r in results] == texts  # input order kept although batches are length-sorted
    for text, result in zip(texts, results):
        assert len(result["masks"]) == 1
        assert_same_candidates(result["masks"][0]["candidates"], pipe(text, top_k=5))
        best = result["best"]
        top = result["masks"][0]["candidates"][0]
        assert (best["token_ids"], best["tokens"], best["sequence"]) == ([top["token_id"]], [top["token"]],
                                                                        top["sequence"])
        assert best["score"] == pytest.approx(top["score"], abs=TOL)


def test_batch_size_does_not_change_results(filler):
    texts = single_mask_texts()
    batched = fm.fill_mask(filler, texts, top_k=3, batch_size=64)
    one_by_one = fm.fill_mask(filler, texts, top_k=3, batch_size=1)
    for a, b in zip(batched, one_by_one):
        ours, single = a["masks"][0]["candidates"], b["masks"][0]["candidates"]
        assert [c["token_id"] for c in ours] == [c["token_id"] for c in single]
        for x, y in zip(ours, single):
            assert x["score"] == pytest.approx(y["score"], abs=TOL)


def test_result_schema_is_stable(filler):
    [result] = fm.fill_mask(filler, "alpha beta [MASK] delta", top_k=2)
    assert list(result) == ["text", "truncated", "masks", "best"]
    assert list(result["masks"][0]) == ["position", "start", "end", "candidates"]
    assert list(result["masks"][0]["candidates"][0]) == ["token", "token_id", "score", "sequence", "filled"]
    assert list(result["best"]) == ["tokens", "token_ids", "score", "sequence", "filled"]
    assert (result["text"], result["truncated"]) == ("alpha beta [MASK] delta", False)
    mask = result["masks"][0]
    assert (mask["position"], mask["start"], mask["end"]) == (3, 11, 17)  # [CLS] alpha beta [MASK]
    assert len(mask["candidates"]) == 2
    json.dumps(result)  # plain data


def test_mask_spellings_are_normalised(filler):
    texts = ["alpha beta [MASK] delta", "alpha beta <mask> delta", "alpha beta [mask] delta", "alpha beta <MASK> delta"]
    results = fm.fill_mask(filler, texts, top_k=3)
    first = results[0]["masks"][0]["candidates"]
    for text, result in zip(texts, results):
        assert result["masks"][0]["candidates"] == first
        mask = result["masks"][0]
        assert text[mask["start"]:mask["end"]].lower() in ("[mask]", "<mask>")


def test_several_masks_per_mask_candidates_and_greedy_joint_filling(filler, pipe):
    text = "alpha [MASK] gamma delta [MASK] zeta"
    [result] = fm.fill_mask(filler, text, top_k=4)
    expected = pipe(text, top_k=4)  # a list per mask, every other mask still masked
    assert [m["position"] for m in result["masks"]] == [2, 5]
    for mask, theirs in zip(result["masks"], expected):
        ours = mask["candidates"]
        assert [c["token_id"] for c in ours] == [c["token"] for c in theirs]
        for a, b in zip(ours, theirs):
            assert abs(a["score"] - b["score"]) < TOL
            # the other mask stays a mask; [CLS]/[SEP] are dropped (the pipeline keeps them for several masks)
            assert a["sequence"] == b["sequence"].replace("[CLS] ", "").replace(" [SEP]", "")
            assert a["sequence"].count("[MASK]") == 1

    # The joint filling fixes the more confident mask first, then re-predicts the other given it (plain HF here).
    import torch

    tops = [m["candidates"][0] for m in result["masks"]]
    first = max(range(2), key=lambda i: tops[i]["score"])
    ids = pipe.tokenizer(text, return_tensors="pt")["input_ids"]
    ids[0, result["masks"][first]["position"]] = tops[first]["token_id"]
    other = result["masks"][1 - first]["position"]
    with torch.no_grad():
        probs = pipe.model(input_ids=ids).logits[0, other].softmax(-1)
    tokens = [0, 0]
    tokens[first], tokens[1 - first] = tops[first]["token_id"], int(probs.argmax())
    ids[0, other] = tokens[1 - first]
    best = result["best"]
    assert best["token_ids"] == tokens
    assert best["score"] == pytest.approx(tops[first]["score"] * float(probs.max()), abs=TOL)
    assert best["sequence"] == pipe.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert "[MASK]" not in best["sequence"]


def test_targets_score_only_those_words(filler, pipe, capsys):
    text = "alpha beta [MASK] delta"
    [result] = fm.fill_mask(filler, text, top_k=5, targets="gamma,omega,beta,gamma")
    candidates = result["masks"][0]["candidates"]
    assert len(candidates) == 3  # top_k capped at the number of distinct targets
    assert {c["token"] for c in candidates} == {"gamma", "omega", "beta"}
    theirs = {c["token_str"]: c["score"] for c in pipe(text, targets=["gamma", "omega", "beta"], top_k=5)}
    for c in candidates:
        assert c["score"] == pytest.approx(theirs[c["token"]], abs=TOL)  # not renormalised, as in the pipeline
    assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
    assert result["best"]["tokens"] == [candidates[0]["token"]]
    assert capsys.readouterr().err == ""


def test_multi_piece_target_scores_first_piece_with_warning(filler, pipe, capsys):
    text = "alpha beta [MASK] delta"
    [result] = fm.fill_mask(filler, text, top_k=5, targets=["alphabeta", "omega"])
    err = capsys.readouterr().err
    assert "'alphabeta' is not one token" in err and "'alpha'" in err
    scores = {c["token"]: c["score"] for c in result["masks"][0]["candidates"]}
    assert set(scores) == {"alpha", "omega"}
    theirs = {c["token_str"]: c["score"] for c in pipe(text, targets=["alphabeta", "omega"])}
    assert scores == pytest.approx(theirs, abs=TOL)


def test_long_text_is_cut_around_the_mask(filler, capsys):
    words = [WORDS[i % len(WORDS)] for i in range(300)]
    words[250] = "[MASK]"
    [result] = fm.fill_mask(filler, " ".join(words), top_k=2)
    assert result["truncated"] is True
    assert "longer than the model's window of 128 tokens" in capsys.readouterr().err
    assert result["masks"][0]["position"] < 128
    assert len(result["masks"][0]["candidates"]) == 2


def test_bf16_encoder_with_fp32_head_stays_close_to_fp32(tiny_mlm, filler):
    texts = single_mask_texts()
    exact = fm.fill_mask(filler, texts, top_k=3)
    fast_filler = fm.load(tiny_mlm, device="cpu", precision="bf16")
    assert (fast_filler.precision, fast_filler.why) == ("bf16", "requested; encoder in autocast, "
                                                                  "vocabulary head in fp32")
    fast = fm.fill_mask(fast_filler, texts, top_k=3)
    for a, b in zip(exact, fast):
        assert b["best"]["token_ids"] == a["best"]["token_ids"]
        for x, y in zip(a["masks"][0]["candidates"], b["masks"][0]["candidates"]):
            assert y["score"] == pytest.approx(x["score"], abs=1e-3)


def test_package_level_function_keeps_working(tiny_mlm):
    import importlib

    importlib.import_module("llmkit.fillmask")  # the recipe module has its own name: the function stays one
    [result] = llmkit.fill_mask(str(tiny_mlm), "alpha [MASK]", top_k=1, device="cpu")
    assert len(result["masks"][0]["candidates"]) == 1 and callable(llmkit.fill_mask)


def test_filled_text_is_the_input_as_written(tmp_path):
    from tests.conftest import make_tiny_mlm

    texts = ["人生得意须尽欢", "莫使金樽空对月", "天生我材必有用"] * 30
    folder = make_tiny_mlm(tmp_path / "zh", texts + toy_corpus(50), vocab_size=120)
    [chinese, english] = fm.fill_mask(folder, ["人生得[MASK]须尽欢", "alpha [MASK] gamma."], top_k=3, device="cpu")
    for candidate in chinese["masks"][0]["candidates"]:
        assert candidate["filled"] == "人生得" + candidate["token"] + "须尽欢"  # no spaces added
        assert " " in candidate["sequence"]  # the pipeline-compatible field keeps the tokenizer's spacing
    token = english["masks"][0]["candidates"][0]["token"]
    assert english["masks"][0]["candidates"][0]["filled"] == f"alpha {token} gamma."
    assert chinese["best"]["filled"] == "人生得" + chinese["best"]["tokens"][0] + "须尽欢"
    table = fm.format_table([chinese])
    assert "人生得" + chinese["best"]["tokens"][0] + "须尽欢" in table


def test_half_precision_checkpoint_fills_masks(tiny_mlm, tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    half = tmp_path / "bf16"
    AutoModelForMaskedLM.from_pretrained(tiny_mlm).to(torch.bfloat16).save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_mlm).save_pretrained(half)
    for precision in ("fp32", "auto"):
        filler = fm.load(half, device="cpu", precision=precision)
        assert next(filler.model.parameters()).dtype == torch.float32
        [result] = fm.fill_mask(filler, "alpha beta [MASK] delta", top_k=3)
        assert len(result["masks"][0]["candidates"]) == 3


def make_tiny_roberta(folder):
    """A real RobertaForMaskedLM (`<mask>`, byte-level BPE, positions offset by the padding index), 64-token window."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    tokenizer = RobertaTokenizer().train_new_from_iterator(toy_corpus(), vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64 + tokenizer.pad_token_id + 1,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_roberta_style_model_takes_bert_spelling_and_its_window(tmp_path, capsys):
    from transformers import pipeline

    folder = make_tiny_roberta(tmp_path / "roberta")
    pipe = pipeline("fill-mask", model=str(folder), device="cpu")
    long_text = " ".join(["alpha"] * 100) + " [MASK] beta"
    results = fm.fill_mask(folder, ["alpha beta [MASK] delta", "gamma<mask> delta", long_text], top_k=3,
                           precision="fp32")
    for text, result in zip(["alpha beta <mask> delta", "gamma<mask> delta"], results):
        assert_same_candidates(result["masks"][0]["candidates"], pipe(text, top_k=3))
    assert results[2]["truncated"] and "window of 64 tokens" in capsys.readouterr().err
    assert results[2]["masks"][0]["position"] < 64

def test_input_errors_before_loading(tiny_mlm, tmp_path):
    with pytest.raises(DataError, match=r"1 of 2 texts? has no mask token \[MASK\].*'alpha beta'"):
        fm.fill_mask(tiny_mlm, ["alpha [MASK]", "alpha beta"])
    with pytest.raises(DataError, match="No input texts"):
        fm.fill_mask(tiny_mlm, [])
    with pytest.raises(ConfigError, match="top-k"):
        fm.fill_mask(tiny_mlm, ["alpha [MASK]"], top_k=0)
    with pytest.raises(DataError, match="targets is empty"):
        fm.fill_mask(tiny_mlm, ["alpha [MASK]"], targets=" , ")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelError, match="is not a model"):
        fm.fill_mask(tmp_path, ["alpha [MASK]"])
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(DataError, match="No input texts"):
        fm.main(str(tiny_mlm), [], input_file=str(blank))


def test_stdin_is_answered_line_by_line_before_it_closes(tiny_mlm):
    """An interactive or endless stream gets each result as soon as its line is in, not when stdin closes."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import OFFLINE

    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "fill-mask", str(tiny_mlm), "--input-file", "-", "--json",
                             "--device", "cpu"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **OFFLINE})
    try:
        for text in ("alpha beta [MASK] delta", "gamma [MASK] epsilon"):
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()  # blocks until the answer for this line is out: stdin is still open
            assert json.loads(line)["text"] == text
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0 and proc.stdout.read() == ""
    finally:
        proc.kill()


def test_a_file_is_read_in_full_batches_a_pipe_as_it_arrives(tmp_path):
    """A regular file never pauses: whole batches (fewer, better length-sorted); a pipe hands on what has arrived."""
    import os
    import threading

    from llmkit import inference

    lines = [f"text {i} [MASK]" for i in range(2500)] + ["", "last [MASK]"]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines), encoding="utf-8")  # no final newline: the last line still counts
    batches = list(inference.text_batches([], str(path), size=1000))
    assert [len(b) for b in batches] == [1000, 1000, 501] and batches[-1][-1] == "last [MASK]"

    read, write = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write, b"one [MASK]\n"), os.close(write)))
    writer.start()
    assert list(inference.line_batches(read, "a pipe", 1000)) == [["one [MASK]"]]
    writer.join()
    os.close(read)


def test_model_without_masked_lm_head_is_refused(tiny_mlm, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_mlm)
    BertModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_mlm).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="no trained masked-LM head"):
        fm.fill_mask(tmp_path, ["alpha [MASK]"])


# ---------------------------------------------------------------- the real CLI


@pytest.mark.slow
def test_cli_json_lines_from_stdin_match_the_api(tiny_mlm, filler):
    texts = ["alpha beta [MASK] delta", "gamma <mask>", "[MASK] beta gamma delta epsilon zeta eta [MASK]"]
    done = run_cli("fill-mask", tiny_mlm, "--input-file", "-", "--json", "--top-k", "3", "--device", "cpu",
                   "--batch-size", "2", "--precision", "fp32", stdin="\n".join(texts) + "\n\n")
    assert "cpu, fp32 (requested)" in done.stderr
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    expected = fm.fill_mask(filler, texts, top_k=3)
    assert [line["text"] for line in lines] == texts
    for got, want in zip(lines, expected):
        assert list(got) == list(want)
        assert got["best"]["token_ids"] == want["best"]["token_ids"]
        assert [m["position"] for m in got["masks"]] == [m["position"] for m in want["masks"]]
        for m, n in zip(got["masks"], want["masks"]):
            assert [c["token"] for c in m["candidates"]] == [c["token"] for c in n["candidates"]]
            assert all(math.isclose(c["score"], d["score"], abs_tol=TOL) for c, d in zip(m["candidates"],
                                                                                          n["candidates"]))


@pytest.mark.slow
def test_cli_table_with_targets_and_several_masks(tiny_mlm, tmp_path):
    inputs = tmp_path / "texts.txt"
    inputs.write_text("alpha [MASK] gamma\nalpha beta [MASK] [MASK] epsilon\n", encoding="utf-8")
    done = run_cli("fill-mask", tiny_mlm, "--input-file", inputs, "--targets", "beta,gamma,alphabeta",
                   "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    assert "'alphabeta' is not one token" in done.stderr
    out = done.stdout
    assert out.index("alpha [MASK] gamma") < out.index("alpha beta [MASK] [MASK] epsilon")
    assert "mask 2 of 2" in out and "best filling (" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert {row[1] for row in rows} <= {"beta", "gamma", "alpha"}
    assert len(rows) == 3 * 3  # three targets for each of the three masks


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no-mask", "not-a-model", "empty-input", "no-head"])
def test_cli_errors_exit_2_with_one_line(case, tiny_mlm, tmp_path):
    if case == "no-mask":
        args = [tiny_mlm, "alpha beta"]
        expected = "no mask token [MASK]"
    elif case == "not-a-model":
        (tmp_path / "weights.bin").write_bytes(b"")
        args = [tmp_path, "alpha [MASK]"]
        expected = "is not a model"
    elif case == "empty-input":
        args = [tiny_mlm, "--input-file", "-"]
        expected = "No input texts in stdin"
    else:
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        BertForSequenceClassification(BertConfig.from_pretrained(tiny_mlm)).save_pretrained(tmp_path)
        AutoTokenizer.from_pretrained(tiny_mlm).save_pretrained(tmp_path)
        args = [tmp_path, "alpha [MASK]"]
        expected = "no trained masked-LM head"
    done = run_cli("fill-mask", *args, stdin="")
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("llmkit: error: ") and expected in done.stderr
