# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""M-BEIR (UniIR, Wei et al. 2023) retrieval evaluation, reading the benchmark's own files.

Layout under the M-BEIR root (as released on the Hub as `TIGER-Lab/M-BEIR`):

    query/{split}/mbeir_{dataset}_task{id}_{split}.jsonl      qid, query_txt, query_img_path, query_modality,
                                                              pos_cand_list, neg_cand_list
    cand_pool/local/mbeir_{dataset}_task{id}[_{split}]_cand_pool.jsonl    did, txt, img_path, modality
    cand_pool/global/mbeir_union_{split}_cand_pool.jsonl      the union pool
    qrels/{split}/mbeir_{dataset}_task{id}_{split}_qrels.txt  `qid Q0 did relevance task_id`
    instructions/query_instructions.tsv                       query_modality, cand_modality, dataset, dataset_id,
                                                              prompt_1 ... (optional)

Image paths are relative to the root (or to `image_root`). Relevance comes from the qrels. Reported: every metric
of `DEFAULT_MBEIR_METRICS` per task and pool; the summary table uses UniIR's protocol (local pool, hit@5, hit@10 for
Fashion200K and FashionIQ) and the GCL paper's (global pool, hit@50).
"""

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .distributed import is_main_process
from .encoding import EmbeddingCache, GCLEmbedder, RetrievalItem, encode_items, evaluation_mode
from .files import EvaluationDataError, optional_text, read_jsonl, read_text_lines, resolve_image
from .metrics import max_cutoff, metrics_from_rankings, metrics_from_relevant_ranks
from .search import TIE_DESCRIPTIONS, check_ties, relevant_ranks, search_top_k

logger = logging.getLogger(__name__)

# M-BEIR modality strings -> ours. UniIR writes fused items as "image,text"; "text,image" is accepted too.
MBEIR_MODALITIES = {"text": "t", "image": "i", "image,text": "it", "text,image": "it"}
# UniIR's task ids: (query modality, candidate modality).
MBEIR_TASKS = {0: ("t", "i"), 1: ("t", "t"), 2: ("t", "it"), 3: ("i", "t"), 4: ("i", "i"), 5: ("i", "it"),
               6: ("it", "t"), 7: ("it", "i"), 8: ("it", "it")}
DATASET_NAMES = {"visualnews": "VisualNews", "mscoco": "MSCOCO", "fashion200k": "Fashion200K", "webqa": "WebQA",
                 "edis": "EDIS", "nights": "NIGHTS", "oven": "OVEN", "infoseek": "InfoSeek",
                 "fashioniq": "FashionIQ", "cirr": "CIRR"}
# UniIR reports hit@10 for these (their pools hold many near-duplicates) and hit@5 elsewhere.
UNIIR_K10_DATASETS = ("fashion200k", "fashioniq")
GLOBAL_K = 50
DEFAULT_MBEIR_METRICS = ("hit@1", "hit@5", "hit@10", "hit@50", "recall@5", "recall@10", "recall@50", "ndcg@10",
                         "mrr@10")
_QUERY_FILE = re.compile(r"^mbeir_(?P<dataset>[a-z0-9]+)_task(?P<task>\d+)_(?P<split>[a-z_]+)\.jsonl$")


def parse_modality(value, where: str) -> str:
    """An M-BEIR modality string -> `"i"`, `"t"` or `"it"`; anything else raises naming `where`."""
    modality = MBEIR_MODALITIES.get(value.replace(" ", "").lower()) if isinstance(value, str) else None
    if modality is None:
        raise EvaluationDataError(f"{where}: unknown modality {value!r}; expected one of {sorted(MBEIR_MODALITIES)}.")
    return modality


def uniir_k(dataset: str) -> int:
    return 10 if dataset.lower() in UNIIR_K10_DATASETS else 5


@dataclass
class CandidatePool:
    """A candidate pool: ids and items in file order."""

    path: Path
    dids: list[str]
    items: list[RetrievalItem]
    modalities: list[str]
    index: dict[str, int] = field(repr=False, default_factory=dict)


def load_candidate_pool(path: str | os.PathLike, image_root: str | os.PathLike, check_images: bool = True) -> CandidatePool:
    """Read a candidate-pool JSONL. Duplicate `did`s, unknown modalities, a modality without its text or image, a
    missing image file and an empty pool raise, naming the file and line."""
    path = Path(path)
    dids, items, modalities, index, first_line = [], [], [], {}, {}
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        did = row.get("did")
        if not isinstance(did, str) or not did:
            raise EvaluationDataError(f"{where}: missing or non-string 'did'.")
        if did in index:
            raise EvaluationDataError(f"{where}: duplicate did {did!r} (first at line {first_line[did]}).")
        modality = parse_modality(row.get("modality"), f"{where} (did {did})")
        text = optional_text(row.get("txt"), where, "txt") if "t" in modality else None
        image = resolve_image(row.get("img_path"), image_root, f"{where} (did {did})", check_images) if "i" in modality else None
        _check_modality_fields(modality, text, image, f"{where} (did {did})")
        index[did], first_line[did] = len(items), line
        dids.append(did)
        items.append(RetrievalItem(text=text, image=image, source=where))
        modalities.append(modality)
    if not items:
        raise EvaluationDataError(f"{path}: the candidate pool is empty.")
    return CandidatePool(path, dids, items, modalities, index)


def _check_modality_fields(modality: str, text, image, where: str) -> None:
    if "t" in modality and text is None:
        raise EvaluationDataError(f"{where}: modality {modality!r} needs a text, but it is empty.")
    if "i" in modality and image is None:
        raise EvaluationDataError(f"{where}: modality {modality!r} needs an image path, but it is empty.")


@dataclass
class MBEIRQuery:
    qid: str
    text: str | None
    image: str | None
    modality: str
    positives: list[str]
    source: str

    @property
    def dataset_id(self) -> str:
        return self.qid.split(":", 1)[0]


def load_queries(path: str | os.PathLike, image_root: str | os.PathLike, check_images: bool = True) -> list[MBEIRQuery]:
    """Read a query JSONL (duplicate qids, unknown modalities and missing images raise, naming file and line)."""
    path = Path(path)
    queries, seen = [], {}
    for line, row in read_jsonl(path):
        where = f"{path}:{line}"
        qid = row.get("qid")
        if not isinstance(qid, str) or not qid:
            raise EvaluationDataError(f"{where}: missing or non-string 'qid'.")
        if qid in seen:
            raise EvaluationDataError(f"{where}: duplicate qid {qid!r} (first at line {seen[qid]}).")
        seen[qid] = line
        modality = parse_modality(row.get("query_modality"), f"{where} (qid {qid})")
        text = optional_text(row.get("query_txt"), where, "query_txt") if "t" in modality else None
        image = resolve_image(row.get("query_img_path"), image_root, f"{where} (qid {qid})", check_images) if "i" in modality else None
        _check_modality_fields(modality, text, image, f"{where} (qid {qid})")
        positives = row.get("pos_cand_list")
        if positives is None:
            positives = []
        if not isinstance(positives, list) or not all(isinstance(did, str) and did for did in positives):
            raise EvaluationDataError(f"{where} (qid {qid}): pos_cand_list must be a list of candidate ids (strings), "
                                      f"got {positives!r}.")
        queries.append(MBEIRQuery(qid, text, image, modality, positives, where))
    if not queries:
        raise EvaluationDataError(f"{path}: no queries.")
    return queries


@dataclass
class Qrels:
    """`relevance[qid][did]` and each query's `task_id`, with the line each judgement came from."""

    path: Path
    relevance: dict[str, dict[str, int]]
    task_ids: dict[str, int]
    lines: dict[tuple[str, str], int]


def load_qrels(path: str | os.PathLike) -> Qrels:
    """Read `qid Q0 did relevance task_id` lines; malformed or duplicate lines raise, naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationDataError(f"{path}: no such qrels file.")
    relevance, task_ids, lines = {}, {}, {}
    for line_number, line in read_text_lines(path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 5:
            raise EvaluationDataError(f"{path}:{line_number}: expected 'qid Q0 did relevance task_id', got {line.strip()!r}.")
        qid, _, did, grade, task = parts
        try:
            grade, task = int(grade), int(task)
        except ValueError:
            raise EvaluationDataError(f"{path}:{line_number}: relevance and task_id must be integers.") from None
        if (qid, did) in lines:
            raise EvaluationDataError(f"{path}:{line_number}: duplicate judgement of ({qid}, {did}) (first at line {lines[qid, did]}).")
        if qid in task_ids and task_ids[qid] != task:
            raise EvaluationDataError(f"{path}:{line_number}: query {qid!r} has task_id {task}, earlier {task_ids[qid]}.")
        lines[qid, did] = line_number
        task_ids[qid] = task
        relevance.setdefault(qid, {})[did] = grade
    if not relevance:
        raise EvaluationDataError(f"{path}: no judgements.")
    return Qrels(path, relevance, task_ids, lines)


def load_instructions(path: str | os.PathLike) -> dict[tuple[str, str, str], list[str]]:
    """UniIR's `query_instructions.tsv`: `{(dataset_id, query modality, candidate modality): [prompt, ...]}` with our
    modality names. The header row is skipped."""
    path = Path(path)
    instructions = {}
    for line_number, line in read_text_lines(path):
        if line_number == 1:  # the header
            continue
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 5:
            raise EvaluationDataError(f"{path}:{line_number}: expected query_modality, cand_modality, dataset, "
                                      "dataset_id and at least one prompt, tab-separated.")
        where = f"{path}:{line_number}"
        key = (parts[3].strip(), parse_modality(parts[0], where), parse_modality(parts[1], where))
        instructions[key] = [prompt.strip() for prompt in parts[4:] if prompt.strip()]
    if not instructions:
        raise EvaluationDataError(f"{path}: no instructions (a header line, then one tab-separated line per dataset "
                                  "and modality pair).")
    return instructions


@dataclass
class MBEIRTask:
    """One M-BEIR task file set, e.g. `mscoco_task0`."""

    dataset: str
    task_id: int
    query_file: Path
    qrels_file: Path
    local_pool_file: Path

    @property
    def name(self) -> str:
        return f"{self.dataset}_task{self.task_id}"

    @property
    def modalities(self) -> tuple[str, str]:
        if self.task_id not in MBEIR_TASKS:
            raise EvaluationDataError(f"{self.query_file}: unknown M-BEIR task id {self.task_id}.")
        return MBEIR_TASKS[self.task_id]

    @property
    def label(self) -> str:
        query, candidate = self.modalities
        return f"{DATASET_NAMES.get(self.dataset, self.dataset)} ({query}→{candidate})"


def discover_tasks(root: str | os.PathLike, split: str = "test", names: Sequence[str] | None = None) -> list[MBEIRTask]:
    """Every `query/{split}/mbeir_*_task*_{split}.jsonl` under `root` with its qrels and local pool (or those named
    in `names`, e.g. `["mscoco_task0"]`). A missing qrels or pool file raises."""
    root = Path(root)
    query_dir = root / "query" / split
    if not query_dir.is_dir():
        raise EvaluationDataError(f"{root}: no query/{split}/ folder; is this an M-BEIR root?")
    tasks = []
    for query_file in sorted(query_dir.glob("mbeir_*.jsonl")):
        match = _QUERY_FILE.match(query_file.name)
        if match is None or match["split"] != split:
            continue
        dataset, task_id = match["dataset"], int(match["task"])
        stem = f"mbeir_{dataset}_task{task_id}"
        pools = [root / "cand_pool" / "local" / f"{stem}_{split}_cand_pool.jsonl",
                 root / "cand_pool" / "local" / f"{stem}_cand_pool.jsonl"]
        pool = next((p for p in pools if p.is_file()), None)
        if pool is None:
            raise EvaluationDataError(f"{query_file}: no local pool (looked for {pools[0]} and {pools[1].name}).")
        qrels = root / "qrels" / split / f"{stem}_{split}_qrels.txt"
        if not qrels.is_file():
            raise EvaluationDataError(f"{query_file}: no qrels file {qrels}.")
        tasks.append(MBEIRTask(dataset, task_id, query_file, qrels, pool))
    if names:
        known = {task.name: task for task in tasks}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise EvaluationDataError(f"{root}: no task(s) {unknown}; found {sorted(known)}.")
        tasks = [known[name] for name in names]
    if not tasks:
        raise EvaluationDataError(f"{query_dir}: no mbeir_*_task*_{split}.jsonl query files.")
    return tasks


def check_judgements(task: MBEIRTask, queries: list[MBEIRQuery], qrels: Qrels, pool: CandidatePool) -> None:
    """Every judged query is a query of the task, every relevant candidate is in `pool`, every query has a relevant
    candidate, and task ids agree; otherwise raise naming the file and line."""
    by_qid = {query.qid: query for query in queries}
    for (qid, did), line in qrels.lines.items():
        where = f"{qrels.path}:{line}"
        if qid not in by_qid:
            raise EvaluationDataError(f"{where}: unknown query {qid!r} (not in {task.query_file}).")
        if qrels.relevance[qid][did] > 0 and did not in pool.index:
            raise EvaluationDataError(f"{where}: unknown candidate {did!r} (not in {pool.path}).")
        if qrels.task_ids[qid] != task.task_id:
            raise EvaluationDataError(f"{where}: task_id {qrels.task_ids[qid]} but the file is task {task.task_id}.")
    for query in queries:
        judged = qrels.relevance.get(query.qid, {})
        if not any(grade > 0 for grade in judged.values()):
            raise EvaluationDataError(f"{query.source}: query {query.qid!r} has no relevant candidate in {qrels.path}.")
        relevant = {did for did, grade in judged.items() if grade > 0}
        if query.positives and set(query.positives) != relevant:
            logger.warning("%s: pos_cand_list of %s differs from the qrels; the qrels are used.", query.source, query.qid)


def query_item(query: MBEIRQuery, instruction: str | None = None) -> RetrievalItem:
    """The query as an item. With an instruction (UniIR's format, `"{instruction} {query_txt}"`), an image-only query
    becomes a fused image+text query, as in UniIR's instruction-tuned models."""
    text = query.text
    if instruction:
        text = f"{instruction} {text}" if text else instruction
    return RetrievalItem(text=text, image=query.image, source=query.source)


class MBEIREvaluator:
    r"""
    M-BEIR evaluation on local and/or global pools.

    Args:
        root (`str`): the M-BEIR folder (see the module docstring for its layout).
        split (`str`): `"test"` (default) or another split with the same layout.
        tasks (`Sequence[str]`, *optional*): task names such as `"mscoco_task0"` (default: every task found).
        pools (`Sequence[str]`): `"local"` (the task's own pool), `"global"` (the union pool), or both.
        instruction_index (`int`, *optional*): prepend prompt number `instruction_index` (0-based) of the
            instruction TSV to each query; `None` (default) uses no instruction. Never random.
        instructions_file (`str`, *optional*): default `root/instructions/query_instructions.tsv`.
        global_pool_file (`str`, *optional*): default `root/cand_pool/global/mbeir_union_{split}_cand_pool.jsonl`.
        image_root (`str`, *optional*): what image paths are relative to (default `root`).
        metrics (`Sequence[str]`): per task and pool.
        batch_size (`int`), cache_dir (`str`, *optional*), show_progress (`bool`): encoding options.
        search_backend (`str`): `"torch"` (exact, blocked) or `"faiss"`; `search_options` go to it.
        check_images (`bool`): check every image file exists while reading (default `True`).
        ties (`str`): `"pessimistic"` (default: a candidate scoring the same as a relevant one ranks ahead of it) or
            `"optimistic"`. With the torch backend the metrics come from the exact rank of every relevant candidate
            in the whole pool; with FAISS, from its top-k list, with equal scores inside it ordered the same way.
        distributed (`bool`): split the encoding across the processes of the default `torch.distributed` group (all
            of them must call the evaluator); rank 0 scores and writes run files and returns the results, the others
            return `None`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "test",
        tasks: Sequence[str] | None = None,
        pools: Sequence[str] = ("local", "global"),
        instruction_index: int | None = None,
        instructions_file: str | os.PathLike | None = None,
        global_pool_file: str | os.PathLike | None = None,
        image_root: str | os.PathLike | None = None,
        metrics: Sequence[str] = DEFAULT_MBEIR_METRICS,
        batch_size: int = 64,
        cache_dir: str | os.PathLike | None = None,
        show_progress: bool = True,
        search_backend: str = "torch",
        search_options: dict | None = None,
        check_images: bool = True,
        name: str = "mbeir",
        ties: str = "pessimistic",
        distributed: bool = False,
    ):
        self.root = Path(root)
        self.ties = check_ties(ties)
        self.distributed = distributed
        unknown_pools = set(pools) - {"local", "global"}
        if unknown_pools or not pools:
            raise ValueError(f"pools must be 'local' and/or 'global', got {list(pools)}.")
        self.pools = tuple(pools)
        self.image_root = Path(image_root) if image_root else self.root
        self.tasks = discover_tasks(self.root, split, tasks)
        # The summary table needs UniIR's hit@5 / hit@10 and the GCL paper's hit@50 whatever else is asked for.
        self.metrics = tuple(dict.fromkeys([*metrics, "hit@5", "hit@10", f"hit@{GLOBAL_K}"]))
        self.depth = max(max_cutoff(self.metrics), GLOBAL_K)
        self.batch_size, self.show_progress, self.check_images = batch_size, show_progress, check_images
        self.cache = EmbeddingCache(cache_dir) if cache_dir else None
        self.search_backend, self.search_options = search_backend, dict(search_options or {})
        self.name = name
        self.instruction_index = instruction_index
        self.instructions = None
        if instruction_index is not None:
            path = Path(instructions_file) if instructions_file else self.root / "instructions" / "query_instructions.tsv"
            self.instructions_file = path
            self.instructions = load_instructions(path)
        self.global_pool_file = Path(global_pool_file) if global_pool_file else (
            self.root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl")
        if "global" in self.pools and not self.global_pool_file.is_file():
            raise EvaluationDataError(f"{self.global_pool_file}: no global pool file (or pass pools=['local']).")
        self._pools: dict[Path, CandidatePool] = {}

    def _pool(self, path: Path) -> CandidatePool:
        if path not in self._pools:
            self._pools[path] = load_candidate_pool(path, self.image_root, self.check_images)
        return self._pools[path]

    def instruction_for(self, query: MBEIRQuery, task: MBEIRTask) -> str | None:
        """Prompt number `instruction_index` for (dataset id, query modality, task's candidate modality)."""
        if self.instructions is None:
            return None
        key = (query.dataset_id, query.modality, task.modalities[1])
        prompts = self.instructions.get(key)
        if not prompts:
            raise EvaluationDataError(f"{self.instructions_file}: no instruction for (dataset_id, query modality, "
                                      f"candidate modality) = {key}, needed by {query.source}.")
        if self.instruction_index >= len(prompts):
            raise EvaluationDataError(f"{self.instructions_file}: {key} has {len(prompts)} prompt(s), "
                                      f"instruction_index={self.instruction_index}.")
        return prompts[self.instruction_index]

    def load_task(self, task: MBEIRTask) -> tuple[list[MBEIRQuery], Qrels]:
        queries = load_queries(task.query_file, self.image_root, self.check_images)
        qrels = load_qrels(task.qrels_file)
        for pool_name in self.pools:
            pool = self._pool(task.local_pool_file if pool_name == "local" else self.global_pool_file)
            check_judgements(task, queries, qrels, pool)
        return queries, qrels

    def _embed_pool(self, embedder, pool: CandidatePool, cache: dict) -> torch.Tensor:
        if pool.path not in cache:
            cache[pool.path] = encode_items(embedder, pool.items, self.batch_size, f"Encoding {pool.path.name}",
                                            self.show_progress, self.cache, distributed=self.distributed)
        return cache[pool.path]

    def _metrics(self, query_embeddings, pool_embeddings, pool, queries, qrels, rankings, scores) -> dict:
        judged = [{did: grade for did, grade in qrels.relevance[q.qid].items() if grade > 0} for q in queries]
        if self.search_backend == "torch":  # exact: every relevant candidate's rank in the whole pool
            relevant = [[pool.index[did] for did in grades] for grades in judged]
            ranks = relevant_ranks(query_embeddings, pool_embeddings, relevant, ties=self.ties)
            gains = [torch.tensor(list(grades.values()), dtype=torch.float64) for grades in judged]
            return metrics_from_relevant_ranks(ranks, gains, self.metrics, ties=self.ties)
        ordered = [_order_ties(ranking, row, grades, self.ties)
                   for ranking, row, grades in zip(rankings, scores.tolist(), judged)]
        return metrics_from_rankings(ordered, [qrels.relevance[q.qid] for q in queries], self.metrics,
                                     query_ids=[q.qid for q in queries])

    def __call__(self, model=None, processor=None, embedder=None, run_dir: str | os.PathLike | None = None) -> dict:
        """Returns `{"results": {task: {"local/hit@5": ...}}, "summary": [...], "average": {...}}`; with `run_dir`,
        also writes TREC run files `run_dir/{pool}/{task}.trec` (`qid Q0 did rank score run`)."""
        embedder = embedder if embedder is not None else GCLEmbedder(model, processor)
        results, summary, pool_embeddings = {}, [], {}
        main = is_main_process() or not self.distributed
        with evaluation_mode(getattr(embedder, "model", None)):
            for task in self.tasks:
                queries, qrels = self.load_task(task)
                items = [query_item(query, self.instruction_for(query, task)) for query in queries]
                query_embeddings = encode_items(embedder, items, self.batch_size, f"Encoding {task.name} queries",
                                                self.show_progress, self.cache, distributed=self.distributed)
                task_results = {}
                for pool_name in self.pools:
                    pool = self._pool(task.local_pool_file if pool_name == "local" else self.global_pool_file)
                    candidates = self._embed_pool(embedder, pool, pool_embeddings)
                    if not main:  # the other processes only help encode
                        continue
                    scores, indices = search_top_k(query_embeddings, candidates, self.depth, self.search_backend,
                                                   **self.search_options)
                    rankings = [[pool.dids[i] for i in row] for row in indices.tolist()]
                    values = self._metrics(query_embeddings, candidates, pool, queries, qrels, rankings, scores)
                    task_results.update({f"{pool_name}/{metric}": value for metric, value in values.items()})
                    if run_dir is not None:
                        write_trec_run(Path(run_dir) / pool_name / f"{task.name}.trec", queries, rankings, scores,
                                       run_name=self.name)
                if main:
                    results[task.name] = task_results
                    summary.append(self._summary_row(task, task_results, len(queries)))
        if not main:
            return None
        return {"results": results, "summary": summary, "average": self._average(summary),
                "ties": TIE_DESCRIPTIONS[self.ties] + ("" if self.search_backend == "torch" else
                                                       " (within FAISS's top-k list)")}

    def _summary_row(self, task: MBEIRTask, values: dict, num_queries: int) -> dict:
        k = uniir_k(task.dataset)
        row = {"task": task.name, "label": task.label, "num_queries": num_queries, "uniir_k": k}
        if "local" in self.pools:
            row["local_uniir"] = values[f"local/hit@{k}"]
        if "global" in self.pools:
            row["global_hit@50"] = values[f"global/hit@{GLOBAL_K}"]
        return row

    def _average(self, summary: list[dict]) -> dict:
        average = {}
        for key in ("local_uniir", "global_hit@50"):
            values = [row[key] for row in summary if key in row]
            if values:
                average[key] = sum(values) / len(values)
        return average


def _order_ties(ranking: list[str], scores: list[float], relevant: dict[str, float], ties: str) -> list[str]:
    """Re-order candidates of equal score in a retrieved list by the tie convention: relevant ones (lowest grade first)
    after the others when pessimistic, before them (highest grade first) when optimistic."""
    sign = 1 if ties == "pessimistic" else -1
    order = sorted(range(len(ranking)), key=lambda j: (-scores[j], sign * relevant.get(ranking[j], 0.0), j))
    return [ranking[j] for j in order]


def write_trec_run(path: Path, queries: Sequence[MBEIRQuery], rankings: Sequence[Sequence[str]],
                   scores: torch.Tensor, run_name: str = "gcl") -> Path:
    """A TREC run file: `qid Q0 did rank score run_name`, ranks from 1 (pyserini / trec_eval read it)."""
    from .report import write_text

    lines = [
        f"{query.qid} Q0 {did} {rank} {score:.6f} {run_name}"
        for query, ranking, row in zip(queries, rankings, scores.tolist())
        for rank, (did, score) in enumerate(zip(ranking, row), start=1)
    ]
    return write_text(path, "\n".join(lines) + "\n")
