"""Data: reading sources in units, the document rule, preparing shards, blocks, keyed order and masks."""

from __future__ import annotations

import gzip
import json
import random
import threading

import numpy as np
import pytest

from llmkit import config, data
from llmkit.data import prepared as prep
from llmkit.errors import DataError
from tests.conftest import prepare_texts as prepare
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


def docs_of(paths, **overrides) -> list[str]:
    plan = data.plan([str(p) for p in paths], cfg_data(**overrides))
    return [d for unit in plan.units for d in data.documents(unit, overrides.get("encoding_errors", "strict"))]


# ---------------------------------------------------------------- reading


def test_txt_documents_are_paragraphs_when_the_file_has_blank_lines_else_lines(tmp_path):
    paras = tmp_path / "paras.txt"
    paras.write_text("first line\nsame paragraph\n\nsecond   paragraph\r\n \n\n", encoding="utf-8")
    assert docs_of([paras]) == ["first line same paragraph", "second paragraph"]
    lines = tmp_path / "lines.txt"  # one document per line (Wikipedia dumps, CC-100 lines, most Chinese corpora)
    lines.write_text("第一篇文档。\nsecond  document\nthird\n", encoding="utf-8")
    assert docs_of([lines]) == ["第一篇文档。", "second document", "third"]
    assert docs_of([paras], txt_unit="line") == ["first line", "same paragraph", "second paragraph"]
    assert docs_of([lines], txt_unit="paragraph") == ["第一篇文档。 second document third"]
    plan = data.plan([str(lines)], cfg_data())
    assert any("one document per line" in note for note in plan.notes)


def test_a_large_file_is_cut_into_units_at_document_boundaries(tmp_path):
    rng = random.Random(0)
    words = "alpha beta gamma delta 北京 ωmega épée".split()
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 400))) for _ in range(12000)]
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(p.replace(" ", "\n", 3) for p in paragraphs) + "\n", encoding="utf-8")
    plan = data.plan([str(big)], cfg_data())
    assert len(plan.units) >= 3 and sum(u.size for u in plan.units) == big.stat().st_size
    assert [u.start for u in plan.units[1:]] == [u.stop for u in plan.units[:-1]]  # contiguous, no gap
    assert docs_of([big]) == paragraphs  # the same documents as reading it whole, none cut or doubled
    lines = tmp_path / "lines.jsonl"
    lines.write_text("".join(json.dumps({"text": p, "n": i}) + "\n" for i, p in enumerate(paragraphs)))
    assert len(data.plan([str(lines)], cfg_data()).units) >= 3
    assert docs_of([lines]) == paragraphs


def test_formats_compression_and_folders(tmp_path):
    rows = [{"body": "alpha", "id": 1}, {"body": None, "id": 2}, {"body": "beta  gamma", "id": 3}]
    (tmp_path / "d").mkdir()
    with gzip.open(tmp_path / "d" / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d" / "b.txt").write_text("three text\n\nfour\n")
    (tmp_path / "d" / ".hidden.txt").write_text("never read\n")
    assert docs_of([tmp_path / "d"]) == ["alpha", "beta gamma", "three text", "four"]  # sorted, None skipped
    csv = tmp_path / "t.csv"
    csv.write_text('text,label\n"hello, world",1\n"a ""quoted""\nline",0\n')
    assert docs_of([csv]) == ["hello, world", 'a "quoted" line']
    array = tmp_path / "t.json"
    array.write_text(json.dumps([{"content": "x y"}, {"content": "z"}]))
    assert docs_of([array]) == ["x y", "z"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"n": list(range(50)), "text": [f"row {i}" for i in range(50)]}), tmp_path / "t.parquet",
                   row_group_size=7)
    assert docs_of([tmp_path / "t.parquet"]) == [f"row {i}" for i in range(50)]


def test_bad_sources_fail_with_one_clear_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.plan([str(tmp_path / "nope.txt")], cfg_data())
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        data.plan([str(tmp_path / "empty.txt")], cfg_data())
    (tmp_path / "x.docx").write_text("hi")
    with pytest.raises(DataError, match="unsupported type '.docx'"):
        data.plan([str(tmp_path / "x.docx")], cfg_data())
    jl = tmp_path / "t.jsonl"
    jl.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match=r"Column 'bdy' not found.*Did you mean 'body'\?.*--text-column"):
        data.plan([str(jl)], cfg_data(text_column="bdy"))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf".encode() + b"\xe9 au lait")
    with pytest.raises(DataError, match=r"not valid UTF-8 \(byte offset 3.*data\.encoding_errors=replace"):
        docs_of([latin])
    assert docs_of([latin], encoding_errors="replace") == ["caf\ufffd au lait"]


# ---------------------------------------------------------------- the held-out split


def test_held_out_split_is_a_seeded_hash_of_each_document():
    docs = [f"document number {i}" for i in range(20000)]
    held = [d for d in docs if data.held_out(d, 0.05, seed=0)]
    assert 0.045 < len(held) / len(docs) < 0.055
    assert held == [d for d in reversed(docs) if data.held_out(d, 0.05, seed=0)][::-1]  # order-free, streamable
    assert [d for d in docs if data.held_out(d, 0.05, seed=1)] != held
    assert data.held_out("same text", 0.5, 0) == data.held_out("same text", 0.5, 0)  # duplicates stay together
    assert not any(data.held_out(d, 0.0, 0) for d in docs)


# ---------------------------------------------------------------- preparing


def test_prepared_folder_manifest_dtype_and_tokens_in_order(tmp_path, tokenizer):
    texts = toy_corpus(200)
    folder, manifest = prepare(tmp_path, tokenizer, texts, fraction=0.1)
    assert manifest["format"] == "llmkit-prepared" and manifest["dtype"] == "uint16"
    assert manifest["tokenizer"]["fingerprint"] == data.tokenizer_fingerprint(tokenizer)
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    train, held = manifest["splits"]["train"], manifest["splits"]["eval"]
    assert train["documents"] + held["documents"] == len(texts) and held["documents"] > 0
    expected = [t for t in texts if not data.held_out(t, 0.1, 0)]
    blocks = data.TokenBlocks(folder, "train", manifest, max_seq_length=32)
    got = np.concatenate([blocks.ids(i) for i in range(len(blocks))]).tolist()
    assert got == [i for t in expected for i in tokenizer(t)["input_ids"]]  # [CLS] ... [SEP] per text, in order
    lengths = [len(blocks.ids(i)) for i in range(len(blocks))]
    assert set(lengths[:-1]) == {32} and 0 < lengths[-1] <= 32  # full blocks; only the last may be short
    assert blocks.num_tokens == train["tokens"] == len(got)
    assert prep.token_dtype(65536) == np.uint16 and prep.token_dtype(65537) == np.uint32


def test_one_document_per_example_is_truncated_keeping_the_closing_token(tmp_path, tokenizer):
    texts = ["alpha beta gamma delta epsilon zeta eta theta iota kappa", "mu"]
    folder, manifest = prepare(tmp_path, tokenizer, texts)
    blocks = data.TokenBlocks(folder, "train", manifest, max_seq_length=8, packing=False)
    assert len(blocks) == 2
    assert len(blocks.ids(0)) == 8 and blocks.ids(0)[-1] == tokenizer.sep_token_id
    assert blocks.ids(1).tolist() == tokenizer("mu")["input_ids"]


def test_worker_processes_and_ranks_give_the_same_shards(tmp_path, tokenizer):
    texts = toy_corpus(3000) * 16  # about 2.4 MB: several units
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(texts) + "\n")
    cfg = cfg_data(train=[str(big)])
    plan = data.plan([str(big)], cfg)
    sources_per_unit = [u.size for u in plan.units]
    assert len(sources_per_unit) >= 2, "the test needs several units"
    outputs = {}
    for name, world, num_proc in (("one", 1, 1), ("pool", 1, 2), ("ranks", 2, 1)):
        folder = tmp_path / name
        settings = data.corpus.settings(plan, tokenizer, cfg, 0.05, folder)
        barrier = threading.Barrier(world)
        manifests = [None] * world

        def rank_run(rank):  # ranks as threads sharing a barrier, as processes share one in a launched run
            manifests[rank] = prep.prepare(plan, tokenizer, folder, settings, num_proc=num_proc, rank=rank,
                                           world=world, barrier=barrier.wait)

        threads = [threading.Thread(target=rank_run, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert manifests[0] == manifests[-1]
        blocks = data.TokenBlocks(folder, "train", manifests[0], 64)
        outputs[name] = np.concatenate([blocks.ids(i) for i in range(len(blocks))])
    assert np.array_equal(outputs["one"], outputs["pool"]) and np.array_equal(outputs["one"], outputs["ranks"])
    assert prep.assign(plan.units, 2)[0] and prep.assign(plan.units, 2)[1]  # both ranks got work


def test_an_interrupted_preparation_continues_and_a_damaged_one_is_refused(tmp_path, tokenizer):
    folder, manifest = prepare(tmp_path, tokenizer, toy_corpus(100))
    (folder / "manifest.json").unlink()
    (folder / "units" / "000000.json").unlink()
    shard = folder / "train" / "000000.tokens"
    before = shard.read_bytes()
    folder2, again = prepare(tmp_path, tokenizer, toy_corpus(100))  # same folder: unit 0 is redone
    assert folder2 == folder and shard.read_bytes() == before and again["splits"] == manifest["splits"]
    shard.write_bytes(before[:-2])
    with pytest.raises(DataError, match=r"000000.tokens' has .* bytes, expected .*damaged.*--overwrite"):
        data.read_manifest(folder)


def test_one_unit_corpus_always_holds_out_a_document(tmp_path, tokenizer):
    texts = ["alpha beta gamma", "delta epsilon zeta", "eta theta iota"]
    folder, manifest = prepare(tmp_path, tokenizer, texts, fraction=0.01)
    assert manifest["splits"]["eval"]["documents"] == 1 and manifest["splits"]["train"]["documents"] == 2
    held = data.TokenBlocks(folder, "eval", manifest, 32, packing=False)
    train = data.TokenBlocks(folder, "train", manifest, 32, packing=False)
    all_docs = {tuple(tokenizer(t)["input_ids"]) for t in texts}
    seen = {tuple(held.ids(0).tolist())} | {tuple(train.ids(i).tolist()) for i in range(2)}
    assert seen == all_docs


def test_evaluation_sample_is_seeded_and_spread(tmp_path, tokenizer):
    folder, manifest = prepare(tmp_path, tokenizer, toy_corpus(400))
    blocks = data.TokenBlocks(folder, "train", manifest, 16)
    sample = blocks.sample(20, seed=0)
    assert len(sample) == 20 and list(sample.indices) == sorted(set(sample.indices.tolist()))
    assert sample.indices.max() > len(blocks) // 2  # not just the first blocks
    assert np.array_equal(blocks.sample(20, seed=0).indices, sample.indices)
    assert [sample[k]["index"] for k in range(3)] == [0, 1, 2]


# ---------------------------------------------------------------- order and masks


def test_keyed_shuffle_is_a_permutation_per_epoch_with_little_memory():
    shuffle = data.KeyedShuffle(1000, seed=42)
    first = list(shuffle)
    assert sorted(first) == list(range(1000)) and first != list(range(1000))
    shuffle.set_epoch(1)
    assert sorted(list(shuffle)) == list(range(1000)) and list(shuffle) != first
    shuffle.set_epoch(0)
    assert list(shuffle) == first
    huge = data.KeyedShuffle(3_000_000_000, seed=1)  # a terabyte of blocks: nothing materialised
    head = [x for _, x in zip(range(5), huge)]
    assert len(set(head)) == 5 and all(0 <= x < 3_000_000_000 for x in head)


def masking(tokenizer, **kwargs):
    from llmkit.masking import KeyedMasking

    return KeyedMasking(tokenizer=tokenizer, key=7, **kwargs)


def test_keyed_masks_rate_and_80_10_10_split(tmp_path, tokenizer):
    import torch

    folder, manifest = prepare(tmp_path, tokenizer, toy_corpus(3000))
    blocks = data.TokenBlocks(folder, "train", manifest, 64)
    examples = [blocks[i] for i in range(len(blocks) - 1)]  # ~28k maskable tokens: 0.01 is 4.6 standard errors
    batch = masking(tokenizer, mlm_probability=0.15)(examples)
    original = torch.tensor(np.stack([e["input_ids"] for e in examples]).astype(np.int64))
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    masked = batch["labels"].ne(-100)
    assert not (masked & special).any(), "special tokens are never masked"
    assert abs(masked.sum().item() / (~special).sum().item() - 0.15) < 0.01
    n = masked.sum().item()
    assert abs((batch["input_ids"][masked] == tokenizer.mask_token_id).sum().item() / n - 0.8) < 0.03
    assert abs((batch["input_ids"][masked] == original[masked]).sum().item() / n - 0.1) < 0.03
    assert torch.equal(batch["labels"][masked], original[masked])


def test_keyed_masks_do_not_depend_on_the_batch_a_sample_is_in(tmp_path, tokenizer):
    import torch

    folder, manifest = prepare(tmp_path, tokenizer, toy_corpus(100))
    blocks = data.TokenBlocks(folder, "train", manifest, 24)
    collate = masking(tokenizer)
    together = collate([blocks[i] for i in range(8)])
    for i in range(8):
        alone = collate([blocks[i]])
        width = alone["input_ids"].shape[1]
        for key in ("input_ids", "labels", "attention_mask"):
            mask = lambda b: b.get(key, torch.ones_like(b["input_ids"]))  # noqa: E731 - absent: all ones
            assert torch.equal(mask(together)[i, :width], mask(alone)[0]), (i, key)  # bit for bit
    collate.epoch = 1
    assert not torch.equal(collate([blocks[0], blocks[1]])["labels"], together["labels"][:2])


def test_whole_word_masking_masks_every_piece_of_a_word(tmp_path):
    import torch

    from llmkit.modeling import train_tokenizer

    texts = toy_corpus(200)
    tok = train_tokenizer(texts, vocab_size=60, lowercase=True)  # small vocabulary: words split into pieces
    folder, manifest = prepare(tmp_path, tok, texts)
    blocks = data.TokenBlocks(folder, "train", manifest, 64)
    examples = [blocks[i] for i in range(len(blocks) - 1)]
    batch = masking(tok, whole_word_mask=True, mask_replace_prob=1.0, random_replace_prob=0.0)(examples)
    masked = batch["labels"].ne(-100)
    pieces = [tok.convert_ids_to_tokens(e["input_ids"].tolist()) for e in examples]
    continuation = torch.tensor([[p.startswith("##") for p in row] for row in pieces])
    assert continuation.any(), "the test needs split words"
    first_piece = continuation.clone()
    first_piece[:, 0] = False  # a block may start inside a word: that piece starts its own word
    both = masked[:, 1:][first_piece[:, 1:]] == masked[:, :-1][first_piece[:, 1:]]
    assert both.all()
    assert masked[continuation].any()
    assert (batch["input_ids"][masked] == tok.mask_token_id).all()


# ---------------------------------------------------------------- tokenizer and the built-in corpus


def test_cjk_is_split_per_character(tokenizer):
    assert tokenizer.tokenize("我爱北京") == ["我", "爱", "北", "京"]


def test_tokenizer_sample_is_bounded_and_seeded(tmp_path):
    big = tmp_path / "big.txt"
    rng = random.Random(1)
    big.write_text("".join(f"document {i} " + "word " * rng.randint(5, 50) + "\n\n" for i in range(60000)))
    corpus = data.plan_corpus(cfg_data(train=[str(big)]))
    budget = 1_000_000
    sample = list(data.tokenizer_sample(corpus, budget, seed=0))
    size = sum(len(t) for t in sample)
    assert budget <= size < budget + 100_000 and size < corpus.train.total_bytes / 2
    assert sample == list(data.tokenizer_sample(corpus, budget, seed=0))
    numbers = {int(t.split()[1]) for t in sample}
    assert max(numbers) > 30000  # drawn from across the corpus, not only its start


def test_builtin_corpus_is_real_english_and_deterministic(tmp_path):
    first = data.builtin_corpus(tmp_path)
    assert len(first) > 5000
    assert sum(len(t) for t in first) > 1_000_000
    assert data.builtin_corpus(tmp_path) == first  # cached copy equals the built one
    words = " ".join(first[:2000]).lower().split()
    assert words.count("the") > 1000


# ---------------------------------------------------------------- the chunk cache


TRICKY = ["Héllo, WORLD! naïve café — déjà-vu?", "我爱北京天安门。中文文本按字切分。", "x=3.14; y=[1,2] {a: 'b'}",
          "Ünïcödé ﬁ ligature ¨ and e\u0301 combining", "literal [MASK] token and [SEP]inside", "a  b", "url://x.y/z?q=1&r=2",
          "tab\tand\u00a0nbsp", "emoji 😀 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]


def folded(texts):
    return [" ".join(t.split()) for t in texts]


def test_chunk_cache_gives_the_tokenizers_own_ids(tokenizer):
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    from llmkit.data.tokenize import Encoder, chunk_mode

    bert = tokenizer.backend_tokenizer.to_str()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(toy_corpus(200) + TRICKY, vocab_size=400, special_tokens=["<s>", "</s>", "<mask>"])
    from tokenizers.processors import RobertaProcessing

    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    texts = folded(TRICKY + toy_corpus(300))
    for spec, mode in ((bert, "alone"), (bpe.to_str(), "space")):
        assert chunk_mode(spec) == mode
        backend = Tokenizer.from_str(spec)
        encoder = Encoder(backend, spec)
        for _ in range(2):  # cold cache, then warm
            got = encoder.chunked(texts)
            want = [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]
            assert [g.tolist() for g in got] == want
        assert encoder.mode == mode


def test_chunk_cache_only_where_no_step_looks_across_a_space(tokenizer):
    from llmkit.data.tokenize import chunk_mode

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    assert chunk_mode(json.dumps(spec)) == "alone"
    assert chunk_mode(json.dumps({**spec, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}})) is None
    assert chunk_mode(json.dumps({**spec, "pre_tokenizer": {"type": "Punctuation"}})) is None  # keeps spaces
    assert chunk_mode(json.dumps({**spec, "normalizer": {"type": "Replace", "pattern": {"String": " "}}})) is None
    spaced = {**spec, "added_tokens": spec["added_tokens"] + [{"id": 999, "content": "new york"}]}
    assert chunk_mode(json.dumps(spaced)) is None
    assert chunk_mode(json.dumps({**spec, "model": {**spec["model"], "type": "BPE", "dropout": 0.1}})) is None


def test_a_chunk_mismatch_falls_back_to_whole_documents(tmp_path, tokenizer):
    from llmkit.data import prepared as prep_module

    texts = toy_corpus(100)
    good, manifest = prepare(tmp_path, tokenizer, texts, name="good")
    encoder = prep_module._encoder(tokenizer.backend_tokenizer.to_str(), "uint16")
    encoder.mode, encoder.checked_all = "alone", False
    wrong = np.array([tokenizer.unk_token_id], dtype=np.uint16).tobytes()
    encoder.cache = {word: wrong for word in ("alpha", "beta")}  # wrong on purpose
    bad, again = prepare(tmp_path, tokenizer, texts, name="bad")
    assert encoder.mode is None  # it noticed, and tokenized whole documents
    assert (bad / "train" / "000000.tokens").read_bytes() == (good / "train" / "000000.tokens").read_bytes()
    prep_module._ENCODERS.clear()
