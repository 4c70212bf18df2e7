"""Guards for untrusted archives: path-traversal-safe extraction with size limits.

Hub downloads and user-supplied `.tar.gz`/`.zip` SavedModels are extracted only after
every member has been checked: no absolute paths, no `..`, no links (a SavedModel has
none), no device files or FIFOs, bounded member count and total size.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from xcit_edge.errors import UsageError

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 8 << 30


def _check_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UsageError(f"{archive}: refusing archive member with absolute path {name!r}")
    if ".." in p.parts:
        raise UsageError(f"{archive}: refusing archive member that escapes the target: {name!r}")
    return p


def _check_totals(count: int, total: int, archive: Path) -> None:
    if count > MAX_MEMBERS:
        raise UsageError(f"{archive}: more than {MAX_MEMBERS} members; refusing to extract")
    if total > MAX_TOTAL_BYTES:
        limit = MAX_TOTAL_BYTES >> 30
        raise UsageError(f"{archive}: would extract {total / 2**30:.1f} GiB; refusing (limit {limit} GiB)")


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        for m in members:
            _check_name(m.name, archive)
            if m.issym() or m.islnk():
                raise UsageError(f"{archive}: refusing link member {m.name!r} -> {m.linkname!r}")
            if not (m.isfile() or m.isdir()):
                raise UsageError(f"{archive}: refusing special file member {m.name!r}")
        _check_totals(len(members), sum(m.size for m in members), archive)
        tf.extractall(dest, filter="data")  # second line of defence, same rules


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(info.filename, archive)
            mode = info.external_attr >> 16
            if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):
                raise UsageError(f"{archive}: refusing link or special file member {info.filename!r}")
        _check_totals(len(infos), sum(i.file_size for i in infos), archive)
        zf.extractall(dest)


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract `archive` (tar, tar.gz, zip) into the new directory `dest`, or refuse it whole."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    try:
        if tarfile.is_tarfile(archive):
            _extract_tar(archive, dest)
        elif zipfile.is_zipfile(archive):
            _extract_zip(archive, dest)
        else:
            raise UsageError(f"{archive}: not a tar or zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise UsageError(f"{archive}: corrupt archive ({e})") from e
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


# --- ops a SavedModel may not contain --------------------------------------------------------------------
# An image model computes on tensors; these ops reach the file system, the network or the Python process.
OUTSIDE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst",
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "LoadAndRemapMatrix", "GenerateVocabRemapping",
    "TFRecordReader", "TFRecordReaderV2", "TextLineReader", "TextLineReaderV2", "WholeFileReader",
    "WholeFileReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "IdentityReader",
    "IdentityReaderV2", "LMDBReader", "ReaderRead", "ReaderReadV2", "ReaderReadUpTo", "ReaderReadUpToV2",
    "ReaderRestoreState", "ReaderRestoreStateV2", "ReaderSerializeState", "ReaderSerializeStateV2",
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "LMDBDataset",
    "ExperimentalLMDBDataset", "SqlDataset", "ExperimentalSqlDataset", "SnapshotDataset", "SnapshotDatasetV2",
    "SaveDataset", "SaveDatasetV2", "LoadDataset", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3", "DataServiceDatasetV4",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary",
    "DebugNumericSummaryV2", "RpcClient", "RpcCall", "RpcServer", "RpcServerStart", "RpcServerRegister",
})
# The SavedModel's own variable checkpoint ops: the loader runs them on its variables/ directory, so they
# are allowed, but not inside the serving function (there a constant path could name any file).
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "Save", "SaveSlices", "Restore", "RestoreSlice",
                            "MergeV2Checkpoints", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2"})


def _func_names(node) -> list[str]:
    names = []
    for attr in node.attr.values():
        if attr.HasField("func"):
            names.append(attr.func.name)
        names.extend(f.name for f in attr.list.func)
    return names


def _serving_functions(meta_graph) -> set[str]:
    """Library functions reachable from the nodes the signatures read their outputs from."""
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    todo = []
    for sig in meta_graph.signature_def.values():
        for info in sig.outputs.values():
            node = nodes.get(info.name.split(":")[0].lstrip("^"))
            if node is not None:
                todo += _func_names(node) + ([node.op] if node.op in library else [])
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        for n in library[name].node_def:
            todo += _func_names(n) + ([n.op] if n.op in library else [])
    return seen


def reaching_outside(meta_graph) -> list[str]:
    """Why the graph is refused, one entry per offending op type (empty: nothing reaches outside): ops on
    files, the network or the Python process anywhere; checkpoint ops in the serving path; PrintV2 to a
    file; op types TensorFlow does not define (a custom op library would have to be loaded to run them)."""
    from tensorflow.python.framework import op_def_registry

    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    serving = _serving_functions(meta_graph)
    found: dict[str, str] = {}
    places = [("graph", meta_graph.graph_def.node)] + [(name, f.node_def) for name, f in library.items()]
    for place, nodes in places:
        for n in nodes:
            if n.op in library:
                continue
            if n.op in OUTSIDE_OPS:
                found.setdefault(n.op, "reads or writes outside the model")
            elif n.op in CHECKPOINT_OPS and place in serving:
                found.setdefault(n.op, "touches files from the serving function")
            elif n.op == "PrintV2" and n.attr["output_stream"].s.decode(errors="replace").startswith("file://"):
                found.setdefault(n.op, "prints to a file")
            elif op_def_registry.get(n.op) is None:
                found.setdefault(n.op, "not a TensorFlow op (a custom op library)")
    return [f"{op} ({why})" for op, why in sorted(found.items())]


def check_ops(path: Path, meta_graph, trust: bool = False) -> None:
    """Refuse (exit 2) a SavedModel whose graph reaches outside itself, before anything of it runs;
    `trust` (--trust-model) lets it through with a warning that names what it contains."""
    import logging

    found = reaching_outside(meta_graph)
    if not found:
        return
    listed = ", ".join(found)
    if trust:
        logging.getLogger(__name__).warning("--trust-model: running %s although it contains %s", path, listed)
        return
    raise UsageError(f"{path}: refusing a model whose graph reaches outside it: {listed} "
                     "(--trust-model runs it anyway)")
