# Copyright 2026 The GCL-HF authors. Apache-2.0.
"""The sentence-transformers entry files of a saved GCL folder.

`GCLModel.save_pretrained` calls [`write_sentence_transformers_files`], so every saved folder (CLIP, VISTA or any other
backbone) also loads with

    SentenceTransformer(folder, trust_remote_code=True)

It writes `modules.json` (one module: `sentence_transformers_gcl.GCLEmbedding`, saved in the folder's root, i.e. the
GCL weights and processor themselves), `config_sentence_transformers.json` (cosine similarity, no prompts) and the
module's own `sentence_gcl_config.json`, and copies `sentence_transformers_gcl.py` with the files it imports. The module
needs sentence-transformers; this file does not (only the standard library and transformers), so a model saved without
the optional `st` extra installed still gets the files.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

# The module file and class named in `modules.json`; sentence-transformers resolves `<file>.<class>` from the folder.
MODULE_FILE = "sentence_transformers_gcl.py"
MODULE_CLASS = "GCLEmbedding"
MODULE_CONFIG_FILE = "sentence_gcl_config.json"
MODULES_FILE = "modules.json"
MODEL_CONFIG_FILE = "config_sentence_transformers.json"

# What `SentenceTransformer.save` itself writes for a model without prompts; `similarity` is cosine on the (already
# L2-normalised) GCL embeddings, i.e. their dot product.
SENTENCE_TRANSFORMER_CONFIG = {
    "model_type": "SentenceTransformer",
    "prompts": {"query": "", "document": ""},
    "default_prompt_name": None,
    "similarity_fn_name": "cosine",
}
MODULE_CONFIG = {"max_seq_length": None}  # None: the tokenizer's maximum (77 for CLIP)
# Every file the writer adds beside what the model's and processor's `save_pretrained` write.
SENTENCE_TRANSFORMERS_FILES = (MODULES_FILE, MODEL_CONFIG_FILE, MODULE_CONFIG_FILE, MODULE_FILE)


def _write_json(path: Path, content) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(content, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _copy(source: Path, target: Path) -> None:
    if source.resolve() == target.resolve():
        return
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def write_sentence_transformers_files(directory: str | os.PathLike) -> bool:
    """
    Write the sentence-transformers files into a saved GCL folder `directory` (see the module docstring).

    `modules.json` and the module file are always (re)written, so the folder names the self-contained module; the two
    configuration files are kept when present (prompts or a `max_seq_length` set through sentence-transformers survive
    a re-save). Returns `False`, writing nothing, when the module file is not beside this one: a model loaded as remote
    code (`trust_remote_code=True`, without this library) carries only the files its own code imports.
    """
    source = Path(__file__).with_name(MODULE_FILE)
    if not source.is_file():
        return False
    from transformers.dynamic_module_utils import get_relative_import_files

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # The module's own relative imports (modeling_gcl.py, processing_gcl.py, ...) travel with it, so the folder is
    # self-contained whatever the model's and processor's `save_pretrained` copied.
    for file in (source, *map(Path, get_relative_import_files(source))):
        _copy(file, directory / file.name)
    module_type = f"{Path(MODULE_FILE).stem}.{MODULE_CLASS}"
    _write_json(directory / MODULES_FILE, [{"idx": 0, "name": "0", "path": "", "type": module_type}])
    for name, content in ((MODEL_CONFIG_FILE, SENTENCE_TRANSFORMER_CONFIG), (MODULE_CONFIG_FILE, MODULE_CONFIG)):
        if not (directory / name).is_file():
            _write_json(directory / name, content)
    return True


__all__ = [
    "MODULE_CLASS",
    "MODULE_CONFIG_FILE",
    "MODULE_FILE",
    "SENTENCE_TRANSFORMERS_FILES",
    "write_sentence_transformers_files",
]
