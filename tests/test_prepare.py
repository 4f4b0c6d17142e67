"""`llmkit prepare` and training from prepared data, through the real CLI: the folder, reuse, streaming sources,
corpora of one document per line, and the bad inputs (a damaged shard, another tokenizer)."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import last_json, run_cli, toy_corpus
from tests.test_errors import assert_refused

pytestmark = pytest.mark.slow

TRAIN = ["--max-seq-length", "32", "--max-steps", "2", "--set", "training.per_device_train_batch_size=8",
         "--set", "data.max_eval_samples=16"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, toy_corpus_file):
    folder = tmp_path_factory.mktemp("prep") / "greek"
    cache = tmp_path_factory.mktemp("prep-cache")
    result = run_cli("prepare", "--data", toy_corpus_file, "-o", folder, "--set", "model.vocab_size=200",
                     env={"LLMKIT_CACHE": str(cache)})
    assert result.returncode == 0, result.stderr
    return folder, result, cache


def test_prepare_writes_a_self_describing_folder(prepared, toy_corpus_file):
    folder, result, _ = prepared
    summary = last_json(result.stdout)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert summary["documents"] + summary["eval_documents"] == 400 and summary["eval_documents"] > 0
    assert summary["tokens"] == manifest["splits"]["train"]["tokens"] and summary["dtype"] == "uint16"
    assert summary["blocks"] == -(-summary["tokens"] // 128) and summary["bytes_on_disk"] > 0
    assert manifest["tokenizer"]["vocab_size"] == summary["vocab_size"] <= 200
    assert str(toy_corpus_file) in manifest["sources"]
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    assert "MB/s" in result.stderr and "tokens/s" in result.stderr and "ETA" in result.stderr
    assert f"llmkit pretrain --data {folder}" in result.stderr


def test_prepare_again_reuses_the_folder(prepared, toy_corpus_file):
    folder, _, cache = prepared
    shard = folder / "train" / "000000.tokens"
    before = shard.stat().st_mtime_ns
    result = run_cli("prepare", "--data", toy_corpus_file, "-o", folder, "--set", "model.vocab_size=200",
                     env={"LLMKIT_CACHE": str(cache)})
    assert result.returncode == 0 and "already prepared" in result.stderr
    assert shard.stat().st_mtime_ns == before


def test_pretrain_from_prepared_data_uses_its_tokenizer(prepared, tmp_path):
    folder, _, _ = prepared
    out = tmp_path / "run"
    result = run_cli("pretrain", "--data", folder, "--size", "tiny", "-o", out, *TRAIN,
                     env={"LLMKIT_CACHE": str(tmp_path / "empty-cache")})
    assert result.returncode == 0, result.stderr
    metrics = last_json(result.stdout)
    assert metrics["corpus_tokens"] == json.loads((folder / "manifest.json").read_text())["splits"]["train"]["tokens"]
    assert "prepare:" not in result.stderr  # nothing tokenized again
    assert not (tmp_path / "empty-cache" / "prepared").exists()
    assert json.loads((out / "config.json").read_text())["vocab_size"] <= 200


def test_a_cached_rerun_does_not_prepare_again(tmp_path, toy_corpus_file):
    env = {"LLMKIT_CACHE": str(tmp_path / "cache")}
    common = ["--data", toy_corpus_file, "--size", "tiny", "--set", "model.vocab_size=200", *TRAIN]
    first = run_cli("pretrain", *common, "-o", tmp_path / "a", env=env)
    assert first.returncode == 0 and "prepare:" in first.stderr, first.stderr
    second = run_cli("pretrain", *common, "-o", tmp_path / "b", env=env)
    assert second.returncode == 0 and "prepare:" not in second.stderr and "using prepared data" in second.stderr
    assert last_json(second.stdout)["eval_loss"] == last_json(first.stdout)["eval_loss"]


def test_one_document_per_line_corpus_trains(tmp_path):
    corpus = tmp_path / "lines.txt"  # no blank lines: each line is a document (Wikipedia dumps, CC-100, Chinese)
    corpus.write_text("\n".join(toy_corpus(300)) + "\n", encoding="utf-8")
    result = run_cli("pretrain", "--data", corpus, "--size", "tiny", "--set", "model.vocab_size=200", "-o",
                     tmp_path / "run", *TRAIN, env={"LLMKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "one document per line" in result.stderr
    assert "300 training documents" not in result.stderr and " held out" in result.stderr


def test_streaming_datasets_source_trains_end_to_end(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "parquet"
    folder.mkdir()
    texts = toy_corpus(400)
    for k in range(3):  # three files: three shards of the stream
        pq.write_table(pa.table({"id": list(range(k, 400, 3)), "text": texts[k::3]}), folder / f"part-{k}.parquet")
    result = run_cli("pretrain", "--data", folder, "--set", "data.streaming=true", "--size", "tiny",
                     "--set", "model.vocab_size=200", "-o", tmp_path / "run", *TRAIN,
                     env={"LLMKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "streamed by datasets in 1 shard(s)" in result.stderr
    manifest = json.loads(next((tmp_path / "cache" / "prepared").glob("*/manifest.json")).read_text())
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["eval"]["documents"] == 400
    assert manifest["units"] == 3


def test_damaged_shard_and_other_tokenizer_are_one_line_errors(prepared, tmp_path, tiny_mlm, toy_corpus_file):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(prepared[0], folder)
    out = tmp_path / "run"
    assert_refused(run_cli("pretrain", "--data", folder, "--tokenizer", tiny_mlm, "--size", "tiny", "-o", out,
                           *TRAIN), "prepared with another tokenizer", "Omit --tokenizer", out=out)
    assert_refused(run_cli("pretrain", "--data", folder, "--data", prepared[0], "-o", out, *TRAIN),
                   "give it alone as --data", out=out)
    shard = folder / "train" / "000000.tokens"
    shard.write_bytes(shard.read_bytes()[:-3])
    assert_refused(run_cli("pretrain", "--data", folder, "--size", "tiny", "-o", out, *TRAIN),
                   "000000.tokens' has", "damaged", out=out)
    other = tmp_path / "occupied"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert_refused(run_cli("prepare", "--data", toy_corpus_file, "-o", other),
                   "not empty and holds no llmkit preparation")
    assert (other / "notes.txt").read_text() == "mine"
    assert_refused(run_cli("prepare", "--data", prepared[0], "-o", tmp_path / "again"), "already prepared")
    assert os.listdir(tmp_path / "occupied") == ["notes.txt"]
