"""Data: loading, validation, tokenization, packing, caching and masking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmkit import config, data
from llmkit.errors import DataError
from tests.conftest import toy_corpus


@pytest.fixture(scope="module")
def tokenizer():
    from llmkit.modeling import train_tokenizer

    return train_tokenizer(toy_corpus() + ["我爱北京天安门。中文文本按字切分。"], vocab_size=300, lowercase=True)


def cfg_data(**overrides):
    cfg = config.build("pretrain").data
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def test_txt_paragraphs_and_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first line\nsame paragraph\n\nsecond   paragraph\r\n\n\n", encoding="utf-8")
    assert data.read_text_file(f, "paragraph") == ["first line same paragraph", "second paragraph"]
    assert data.read_text_file(f, "line") == ["first line", "same paragraph", "second paragraph"]


def test_non_utf8_reports_byte_offset_and_replace_option(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf".encode() + b"\xe9 au lait")
    with pytest.raises(DataError, match=r"not valid UTF-8 \(byte offset 3.*data\.encoding_errors=replace"):
        data.read_text_file(f)
    assert data.read_text_file(f, errors="replace") == ["caf\ufffd au lait"]


def test_missing_empty_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.expand_files([str(tmp_path / "nope.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        data.expand_files([str(empty)])
    odd = tmp_path / "x.docx"
    odd.write_text("hi")
    with pytest.raises(DataError, match="unsupported type '.docx'"):
        data.expand_files([str(odd)])


def test_folder_and_table_formats(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("one text\n\ntwo text\n")
    (tmp_path / "d" / "b.txt").write_text("three text\n")
    texts, _ = data.load_texts([str(tmp_path / "d")], cfg_data())
    assert texts == ["one text", "two text", "three text"]
    rows = [{"body": "alpha", "id": 1}, {"body": "beta", "id": 2}]
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    texts, _ = data.load_texts([str(jl)], cfg_data(text_column="body"))
    assert texts == ["alpha", "beta"]
    # auto-detected: the only string column
    texts, _ = data.load_texts([str(jl)], cfg_data())
    assert texts == ["alpha", "beta"]
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\nhello world,1\nbye,0\n")
    assert data.load_texts([str(csv)], cfg_data())[0] == ["hello world", "bye"]


def test_wrong_column_says_did_you_mean(tmp_path):
    jl = tmp_path / "t.jsonl"
    jl.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match=r"Column 'bdy' not found.*Did you mean 'body'\?.*--text-column"):
        data.load_texts([str(jl)], cfg_data(text_column="bdy"))


def test_empty_corpus_after_filtering(tmp_path):
    f = tmp_path / "blank.jsonl"
    f.write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(DataError, match="No text found"):
        data.load_texts([str(f)], cfg_data())


def test_split_is_seeded_document_level_and_disjoint():
    texts = [f"doc {i}" for i in range(100)]
    train, held = data.split_eval(texts, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(texts)
    assert data.split_eval(texts, 0.1, seed=3) == (train, held)
    assert data.split_eval(texts, 0.1, seed=4)[1] != held


def test_packing_keeps_every_token_in_order(tokenizer):
    texts = toy_corpus(50)
    blocks = data.build_blocks(tokenizer, texts, max_seq_length=32, packing=True)
    expected = [i for t in texts for i in tokenizer(t)["input_ids"]]  # [CLS] ... [SEP] per text
    got = [i for b in range(len(blocks)) for i in blocks[b]["input_ids"]]
    assert got == expected
    lengths = blocks.lengths()
    assert (lengths[:-1] == 32).all() and 0 < lengths[-1] <= 32  # full blocks; only the last may be short
    item = blocks[0]
    special = set(tokenizer.all_special_ids)
    assert item["special_tokens_mask"] == [int(i in special) for i in item["input_ids"]]


def test_line_by_line_truncates(tokenizer):
    texts = ["alpha beta gamma delta epsilon zeta eta theta iota kappa", "mu"]
    blocks = data.build_blocks(tokenizer, texts, max_seq_length=8, packing=False)
    assert len(blocks) == 2
    assert blocks.lengths().tolist() == [8, len(tokenizer("mu")["input_ids"])]
    assert blocks[0]["input_ids"][-1] == tokenizer.sep_token_id


def test_cjk_is_split_per_character(tokenizer):
    pieces = tokenizer.tokenize("我爱北京")
    assert pieces == ["我", "爱", "北", "京"]


def test_cache_key_covers_tokenizer_and_length(tokenizer, tmp_path):
    from llmkit.modeling import train_tokenizer

    texts = toy_corpus(30)
    d = cfg_data(cache_dir=str(tmp_path), max_seq_length=16)
    first = data.cached_blocks(tokenizer, texts, d, with_offsets=False)
    assert len(list((tmp_path / "features").iterdir())) == 1
    again = data.cached_blocks(tokenizer, texts, d, with_offsets=False)
    assert np.array_equal(first.ids, again.ids)
    assert len(list((tmp_path / "features").iterdir())) == 1  # reused
    d.max_seq_length = 24
    data.cached_blocks(tokenizer, texts, d, with_offsets=False)
    other_tok = train_tokenizer(texts, vocab_size=150, lowercase=True)
    data.cached_blocks(other_tok, texts, d, with_offsets=False)
    data.cached_blocks(tokenizer, texts + ["one more"], d, with_offsets=False)
    assert len(list((tmp_path / "features").iterdir())) == 4  # each change made new features


def test_cache_key_ignores_the_truncation_state_a_call_leaves(tokenizer, tmp_path):
    # A tokenizer call with truncation=True changes the backend's settings; a process that loaded features
    # from the cache (and never called the tokenizer) must compute the same keys as the one that built them.
    before = data.tokenizer_fingerprint(tokenizer)
    tokenizer(["alpha beta gamma delta"], truncation=True, max_length=3, padding="max_length")
    assert data.tokenizer_fingerprint(tokenizer) == before


def test_damaged_cache_is_rebuilt(tokenizer, tmp_path):
    texts = toy_corpus(30)
    d = cfg_data(cache_dir=str(tmp_path), max_seq_length=16)
    first = data.cached_blocks(tokenizer, texts, d, with_offsets=False)
    (folder,) = (tmp_path / "features").iterdir()
    (folder / "ids.npy").write_bytes(b"not an array")
    again = data.cached_blocks(tokenizer, texts, d, with_offsets=False)
    assert np.array_equal(first.ids, again.ids)
    assert np.array_equal(np.load(folder / "ids.npy"), first.ids)


def test_length_grouped_order_is_seeded_per_epoch_not_by_the_global_rng():
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from llmkit.training import EpochLengthGroupedSampler

    lengths = [(i * 37) % 50 + 1 for i in range(64)]

    def order(epoch: int, global_seed: int) -> list[int]:
        torch.manual_seed(global_seed)
        sampler = EpochLengthGroupedSampler(LengthGroupedSampler(8, lengths=lengths, generator=torch.Generator()),
                                            seed=42)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 1) == order(0, 2)  # every process agrees, whatever its global RNG went through
    assert order(1, 1) == order(1, 3) != order(0, 1)  # a new order each epoch
    assert sorted(order(1, 1)) == list(range(64))
    first_step = order(0, 1)[:8]  # the step holding the longest example comes first, sorted longest first
    assert max(lengths) in [lengths[i] for i in first_step]
    assert [lengths[i] for i in first_step] == sorted((lengths[i] for i in first_step), reverse=True)


def test_masking_rate_and_80_10_10_split(tokenizer):
    import torch
    from transformers import DataCollatorForLanguageModeling

    torch.manual_seed(0)
    blocks = data.build_blocks(tokenizer, toy_corpus(400), max_seq_length=64, packing=True)
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    batch = collator([blocks[i] for i in range(len(blocks) - 1)])
    original = torch.tensor([blocks[i]["input_ids"] for i in range(len(blocks) - 1)])
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    masked = batch["labels"].ne(-100)
    assert not (masked & special).any(), "special tokens are never masked"
    rate = masked.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.01
    replaced = batch["input_ids"][masked] == tokenizer.mask_token_id
    kept = batch["input_ids"][masked] == original[masked]
    n = masked.sum().item()
    assert abs(replaced.sum().item() / n - 0.8) < 0.03
    assert abs(kept.sum().item() / n - 0.1) < 0.03  # ~10% unchanged (+ random picks equal to the original)
    assert torch.equal(batch["labels"][masked], original[masked])


def test_builtin_corpus_is_real_english_and_deterministic(tmp_path):
    first = data.builtin_corpus(tmp_path)
    assert len(first) > 5000
    assert sum(len(t) for t in first) > 1_000_000
    assert (tmp_path / next(p.name for p in tmp_path.iterdir())).is_file()
    assert data.builtin_corpus(tmp_path) == first  # cached copy equals the built one
    words = " ".join(first[:2000]).lower().split()
    assert words.count("the") > 1000


def test_whole_word_masking_masks_every_piece_of_a_word():
    import torch
    from transformers import DataCollatorForLanguageModeling

    from llmkit.modeling import train_tokenizer

    texts = toy_corpus(200)
    tok = train_tokenizer(texts, vocab_size=60, lowercase=True)  # small vocabulary: words split into pieces
    blocks = data.build_blocks(tok, texts, max_seq_length=64, packing=True, with_offsets=True)
    collator = DataCollatorForLanguageModeling(tokenizer=tok, whole_word_mask=True, mlm_probability=0.15,
                                               mask_replace_prob=1.0, random_replace_prob=0.0)
    torch.manual_seed(0)
    batch = collator([{k: v for k, v in blocks[i].items() if k != "index"} for i in range(len(blocks) - 1)])
    masked = batch["labels"].ne(-100)
    pieces = [tok.convert_ids_to_tokens(row) for row in
              torch.tensor([blocks[i]["input_ids"] for i in range(len(blocks) - 1)]).tolist()]
    continuation = torch.tensor([[p.startswith("##") for p in row] for row in pieces])
    assert continuation.any(), "the test needs split words"
    # a continuation piece is masked exactly when the piece before it (same word) is masked
    both = masked[:, 1:][continuation[:, 1:]] == masked[:, :-1][continuation[:, 1:]]
    assert both.all()
    assert masked[continuation].any()
