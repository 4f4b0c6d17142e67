"""All reading of data: pretraining corpora at any scale, labeled tables, and their tokenized forms.

- `sources`: files, folders and `datasets` names, planned as units and read as a stream in bounded chunks;
- `prepared`: a corpus tokenized once (every core, every rank) into memory-mapped shards and a manifest;
- `blocks`: training examples cut from prepared shards at read time, and the keyed epoch order;
- `corpus`: what the recipes call (plan, sample for a tokenizer, prepare, open blocks; the built-in corpus);
- `labeled`: tables of texts and labels for fine-tuning, and cached classification features.

Importing it stays light (numpy, no torch): the CLI validates data before anything heavy is loaded.
"""

from llmkit.data.blocks import KeyedShuffle, Selection, TokenBlocks
from llmkit.data.corpus import (Corpus, Prepared, builtin_corpus, builtin_corpus_file, cache_root, default_num_proc,
                                describe, docstring_paragraphs, open_blocks, paragraphs, plan_corpus, prepare_corpus,
                                tokenizer_sample)
from llmkit.data.labeled import cached_arrays, load_table, texts_fingerprint
from llmkit.data.prepared import held_out, is_prepared, read_manifest, token_dtype, tokenizer_fingerprint
from llmkit.data.sources import (TEXT_COLUMN_GUESSES, TEXT_SUFFIXES, Plan, Unit, documents, expand_files, guesses,
                                 is_local, pick_column, plan, suffixes)

__all__ = [
    "KeyedShuffle", "Selection", "TokenBlocks", "Corpus", "Prepared", "builtin_corpus", "builtin_corpus_file",
    "cache_root", "default_num_proc", "describe", "docstring_paragraphs", "open_blocks", "paragraphs", "plan_corpus",
    "prepare_corpus", "tokenizer_sample", "cached_arrays", "load_table", "texts_fingerprint", "held_out",
    "is_prepared", "read_manifest", "token_dtype", "tokenizer_fingerprint", "TEXT_COLUMN_GUESSES", "TEXT_SUFFIXES",
    "Plan", "Unit", "documents", "expand_files", "guesses", "is_local", "pick_column", "plan", "suffixes",
]
