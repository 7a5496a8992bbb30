"""Data for the Tree-LSTM example: the Stanford Sentiment Treebank and a synthetic treebank.

Trees are stored as flat arrays in post-order (see :class:`Tree`), which is what both the
per-example model code and a hand-batched implementation consume. The module only needs numpy,
the standard library and `spmdbatch.files` (atomic writes).

The Stanford Sentiment Treebank (Socher et al., EMNLP 2013) comes as ``train.txt``, ``dev.txt``
and ``test.txt`` with one tree per line in PTB bracket format::

    (3 (2 (2 The) (2 Rock)) (4 (2 is) (4 great)))

Every node carries a sentiment label 0-4 (very negative .. very positive) and every internal
node has exactly two children. Tokens are separated by ASCII spaces (or tabs) only (a few words
contain a no-break space) and ``\\/`` and ``\\*`` are escaped forms of ``/`` and ``*``.

Typical use::

    from examples.treelstm import data
    sst = data.load_sst(data.default_data_dir(), binary=True)
    for batch in data.batches(sst.train, 25, shuffle=True, rng=0):
        ...

Where the treebank is not at hand, :func:`download` fetches the official archive, and
:func:`synthetic_treebank` makes a learnable stand-in with a similar size distribution.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from spmdbatch.files import write_text_atomic

__all__ = [
    "NUM_LABELS", "NO_LABEL", "PAD", "UNK", "PAD_ID", "UNK_ID", "SPLITS", "OFFICIAL_URL",
    "SST_MD5", "Tree", "num_nodes", "num_leaves", "depth", "heights", "validate_tree",
    "parse_tree", "ReadResult", "read_trees", "Vocab", "to_binary", "SST", "load_sst",
    "default_data_dir", "download", "unpack_archive", "MAX_SPLIT_BYTES", "synthetic_treebank", "batches",
    "sst_size_stats",
]

#: Number of fine-grained sentiment labels in the treebank (0 very negative .. 4 very positive).
NUM_LABELS = 5
#: Label of a node that has no label in the binary view (a neutral node); losses skip it.
NO_LABEL = -1
#: Padding word and its id: the ``word`` entry of every internal node.
PAD = "<pad>"
PAD_ID = 0
#: Unknown word and its id: what :meth:`Vocab.lookup` returns for a word not in the vocabulary.
UNK = "<unk>"
UNK_ID = 1
#: The three files of the standard split, in the order train, dev, test.
SPLITS = ("train", "dev", "test")
#: The official archive of the PTB-format trees from the Stanford NLP group.
OFFICIAL_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
#: md5 sums of the three files of the official archive.
SST_MD5 = {
    "train.txt": "b12d531b1b913a3bb49719ba5cc1f67a",
    "dev.txt": "c405f1d724964e6f72314b5a51fea691",
    "test.txt": "97b75f6ca1ae58b4d52fbf9381dc6f8c",
}
#: Environment variable that points :func:`default_data_dir` at a treebank directory.
DATA_DIR_ENV = "SPMDBATCH_SST_DIR"


# --- trees -------------------------------------------------------------------------------------


class Tree(NamedTuple):
    """A binary tree as post-order node arrays (all ``int64``, one entry per node).

    - ``word``: the word id of a leaf; internal nodes hold :data:`PAD_ID` (0).
    - ``left``, ``right``: indices of the two children of an internal node, ``-1`` for a leaf
      (a node is a leaf exactly when ``left == -1``; then ``right == -1`` too).
    - ``label``: the label of every node: 0-4 fine-grained, 0/1 in the binary view where
      :data:`NO_LABEL` (-1) marks a node without a label.

    Invariants (checked by :func:`validate_tree`): every child index is smaller than its
    parent's, every node except the root is the child of exactly one node, and the root is the
    last node. Trees read from the treebank are in depth-first post-order (left subtree, right
    subtree, node), so their leaves appear in sentence order.
    """

    word: np.ndarray
    left: np.ndarray
    right: np.ndarray
    label: np.ndarray

    @property
    def num_nodes(self) -> int:
        """Number of nodes."""
        return len(self.label)

    @property
    def root(self) -> int:
        """Index of the root (the last node)."""
        return len(self.label) - 1


def num_nodes(tree: Tree) -> int:
    """Number of nodes of ``tree``."""
    return len(tree.label)


def num_leaves(tree: Tree) -> int:
    """Number of leaves (words) of ``tree``."""
    return int(np.count_nonzero(np.asarray(tree.left) < 0))


def heights(tree: Tree) -> np.ndarray:
    """Height of every node as an ``int64`` array: 0 for a leaf, else 1 + the larger height of
    its two children. Nodes of equal height do not depend on each other, so a hand-batched
    implementation can process all nodes of height 0, then 1, and so on."""
    left = np.asarray(tree.left).tolist()
    right = np.asarray(tree.right).tolist()
    h = [0] * len(left)
    for k, (l, r) in enumerate(zip(left, right)):
        if l >= 0:
            hl, hr = h[l], h[r]
            h[k] = 1 + (hl if hl > hr else hr)
    return np.asarray(h, dtype=np.int64)


def depth(tree: Tree) -> int:
    """Number of nodes on the longest root-to-leaf path (a single leaf has depth 1)."""
    if num_nodes(tree) == 0:
        return 0
    return int(heights(tree)[-1]) + 1


def validate_tree(tree: Tree) -> None:
    """Raise ``ValueError`` unless ``tree`` satisfies the :class:`Tree` invariants."""
    arrays = {name: np.asarray(getattr(tree, name)) for name in Tree._fields}
    n = len(arrays["label"])
    if n == 0:
        raise ValueError("a tree needs at least one node")
    for name, a in arrays.items():
        if a.shape != (n,) or a.dtype != np.int64:
            raise ValueError(f"Tree.{name} must be an int64 array of shape ({n},), "
                             f"got {a.dtype} {a.shape}")
    left, right = arrays["left"], arrays["right"]
    idx = np.arange(n)
    leaf = left < 0
    if np.any(leaf != (right < 0)) or np.any(left[leaf] != -1) or np.any(right[leaf] != -1):
        raise ValueError("a node must have two children or none (-1 for both)")
    if np.any(left[~leaf] >= idx[~leaf]) or np.any(right[~leaf] >= idx[~leaf]):
        raise ValueError("every child index must be smaller than its parent's")
    children = np.concatenate([left[~leaf], right[~leaf]])
    counts = np.bincount(children, minlength=n)
    if np.any(counts[:-1] != 1) or counts[-1] != 0:
        raise ValueError("every node except the last (the root) must be the child of exactly "
                         "one node")


# --- parsing -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[()]|[^ \t()]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_BOM = b"\xef\xbb\xbf"
_ESCAPE = re.compile(r"\\([/*])")


_LABELS = {str(k): k for k in range(NUM_LABELS)}


def _unescape(word: str) -> str:
    return _ESCAPE.sub(r"\1", word) if "\\" in word else word


class _RawTree(NamedTuple):
    """A parsed line before its words are mapped to ids."""

    words: list      # leaf words in sentence order (unescaped)
    leaf_nodes: list  # node index of each leaf, in the same order
    left: list
    right: list
    label: list

    def encode(self, vocab: "Vocab") -> Tree:
        word = np.full(len(self.label), PAD_ID, dtype=np.int64)
        word[self.leaf_nodes] = [vocab.lookup(w) for w in self.words]
        return Tree(word, np.asarray(self.left, dtype=np.int64),
                    np.asarray(self.right, dtype=np.int64), np.asarray(self.label, dtype=np.int64))


def _location(filename, lineno) -> str:
    where = str(filename) if filename is not None else "<string>"
    return f"{where}:{lineno}" if lineno is not None else where


def _parse_raw(line: str, filename=None, lineno=None) -> _RawTree:
    """Parse one PTB-format tree without recursion. Raises ``ValueError`` naming the place."""
    line = line.rstrip("\r\n")
    tokens = _TOKEN.findall(line)

    def fail(i: int, message: str):
        # Column (1-based) of token i, found again only on the error path.
        col = len(line) + 1
        for j, m in enumerate(_TOKEN.finditer(line)):
            if j == i:
                col = m.start() + 1
                break
        return ValueError(f"{_location(filename, lineno)}: malformed tree: {message} "
                          f"(column {col})")

    words, leaf_nodes, left, right, label = [], [], [], [], []
    labels = _LABELS
    # Open nodes, innermost last: [label, first child, second child, number of children, word].
    stack = []
    push, pop = stack.append, stack.pop
    done = False
    n = len(tokens)
    i = 0
    while i < n:
        tok = tokens[i]
        if done:
            raise fail(i, f"unexpected {tok!r} after the end of the tree")
        if tok == "(":
            if stack:
                top = stack[-1]
                if top[4] is not None:
                    raise fail(i, "a node has both a word and a phrase as children")
                if top[3] == 2:
                    raise fail(i, "a node has more than two children")
            i += 1
            value = labels.get(tokens[i]) if i < n else None
            if value is None:
                if i >= n or tokens[i] == "(" or tokens[i] == ")":
                    raise fail(i, "missing label after '('")
                tok = tokens[i]
                if not _INTEGER.fullmatch(tok):
                    raise fail(i, f"label {tok!r} is not an integer")
                raise fail(i, f"label {tok} is out of range 0-{NUM_LABELS - 1}")
            push([value, -1, -1, 0, None])
        elif tok == ")":
            if not stack:
                raise fail(i, "unbalanced ')'")
            value, c0, c1, nchild, word = pop()
            node = len(label)
            if word is not None:
                words.append(word)
                leaf_nodes.append(node)
                left.append(-1)
                right.append(-1)
            elif nchild == 2:
                left.append(c0)
                right.append(c1)
            elif nchild == 0:
                raise fail(i, "a node has neither a word nor children")
            else:
                raise fail(i, "a node has a single child phrase (internal nodes need exactly two)")
            label.append(value)
            if stack:
                parent = stack[-1]
                if parent[3] == 0:
                    parent[1] = node
                    parent[3] = 1
                else:
                    parent[2] = node
                    parent[3] = 2
            else:
                done = True
        else:
            if not stack:
                raise fail(i, f"word {tok!r} outside of any node")
            top = stack[-1]
            if top[3]:
                raise fail(i, f"word {tok!r} next to phrase children")
            if top[4] is not None:
                raise fail(i, f"a node has more than one word ({top[4]!r} and {tok!r})")
            top[4] = _unescape(tok) if "\\" in tok else tok
        i += 1
    if stack:
        raise fail(n, f"unbalanced '(': {len(stack)} node(s) not closed at the end of the line")
    if not done:
        raise fail(n, "no tree on this line")
    return _RawTree(words, leaf_nodes, left, right, label)


def parse_tree(line: str, vocab: "Vocab", filename=None, lineno=None) -> Tree:
    """Parse one tree in PTB bracket format into a :class:`Tree`, mapping words through
    ``vocab`` (unknown words become :data:`UNK_ID`).

    The parser is iterative, so arbitrarily deep trees are fine, and strict: unbalanced
    parentheses, a missing, non-integer or out-of-range label, a node with one phrase child or
    more than two children, a node mixing a word and phrases, or text after the tree raise
    ``ValueError`` with a message that starts with ``filename:lineno:``. Tokens are split on
    ASCII spaces and tabs only, and ``\\/`` and ``\\*`` in words are unescaped to ``/`` and ``*``.
    """
    return _parse_raw(line, filename, lineno).encode(vocab)


class ReadResult(NamedTuple):
    """What :func:`read_trees` returns: the trees, the leaf words of each tree (in sentence
    order, unescaped) and the vocabulary used to encode them."""

    trees: list
    tokens: list
    vocab: "Vocab"


def _read_raw(path) -> list:
    path = Path(path)
    raws = []
    with open(path, "rb") as f:
        for lineno, data in enumerate(f, start=1):
            if lineno == 1 and data.startswith(_BOM):
                data = data[len(_BOM):]              # a UTF-8 byte order mark
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{_location(path, lineno)}: not UTF-8 text (byte "
                                 f"0x{data[exc.start]:02x} at byte {exc.start + 1} of the line); "
                                 f"the treebank files are UTF-8, so re-encode this one "
                                 f"(for example with iconv -f latin1 -t utf-8)") from None
            if line.strip(" \t\r\n"):     # blank lines (spaces, tabs) are skipped
                raws.append(_parse_raw(line, path, lineno))
    return raws


def read_trees(path, vocab: "Vocab | None" = None) -> ReadResult:
    """Read a treebank file (UTF-8, optionally with a byte order mark; one tree per line;
    lines of only spaces and tabs are skipped).

    Words are mapped through ``vocab``; without one, a vocabulary is built from this file's own
    words with ``Vocab.build(tokens)``. Returns ``ReadResult(trees, tokens, vocab)``. A
    malformed line raises ``ValueError`` that names the file and line (``train.txt:123: ...``).
    """
    raws = _read_raw(path)
    tokens = [r.words for r in raws]
    if vocab is None:
        vocab = Vocab.build(tokens)
    return ReadResult([r.encode(vocab) for r in raws], tokens, vocab)


# --- vocabulary --------------------------------------------------------------------------------


class Vocab:
    """A word <-> id mapping. Id :data:`PAD_ID` (0) is :data:`PAD` (the word of internal nodes)
    and id :data:`UNK_ID` (1) is :data:`UNK`, the id of every word not in the vocabulary; the
    other words follow. Words are case-sensitive.
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    _FORMAT = "spmdbatch.treelstm.vocab"

    def __init__(self, words: Iterable[str] = ()):
        """A vocabulary of the special entries followed by ``words`` (duplicates and the
        special words themselves are skipped)."""
        self._itos = [PAD, UNK]
        self._stoi = {PAD: PAD_ID, UNK: UNK_ID}
        for w in words:
            if not isinstance(w, str):
                raise TypeError(f"vocabulary words must be str, got {type(w).__name__}")
            if w not in self._stoi:
                self._stoi[w] = len(self._itos)
                self._itos.append(w)

    @classmethod
    def build(cls, sentences: Iterable[Iterable[str]], min_count: int = 1,
              max_size: int | None = None) -> "Vocab":
        """Vocabulary of the words occurring at least ``min_count`` times in ``sentences`` (an
        iterable of word lists), most frequent first (ties in first-seen order), keeping at
        most ``max_size`` words besides the special ones."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts = Counter()
        for s in sentences:
            counts.update(s)
        words = [w for w, c in counts.most_common() if c >= min_count]
        if max_size is not None:
            words = words[:max_size]
        return cls(words)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, word) -> bool:
        return word in self._stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self._itos == other._itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} entries)"

    def lookup(self, word: str) -> int:
        """Id of ``word``, :data:`UNK_ID` for an unknown word."""
        return self._stoi.get(word, UNK_ID)

    def encode(self, words: Iterable[str]) -> np.ndarray:
        """Ids of ``words`` as an ``int64`` array."""
        return np.asarray([self._stoi.get(w, UNK_ID) for w in words], dtype=np.int64)

    def word(self, index: int) -> str:
        """The word with id ``index``."""
        return self._itos[index]

    @property
    def words(self) -> list:
        """All entries in id order (a copy), the special ones first."""
        return list(self._itos)

    def save(self, path) -> None:
        """Write the vocabulary to ``path`` as JSON (atomically: an interrupted save leaves
        the previous file)."""
        payload = {"format": self._FORMAT, "version": 1, "words": self._itos}
        write_text_atomic(path, json.dumps(payload, ensure_ascii=False))

    @classmethod
    def load(cls, path) -> "Vocab":
        """Read a vocabulary written by :meth:`save`."""
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("format") != cls._FORMAT:
            raise ValueError(f"{path}: not a vocabulary file written by Vocab.save")
        words = payload.get("words")
        if (not isinstance(words, list) or words[:2] != [PAD, UNK]
                or len(set(words)) != len(words)):
            raise ValueError(f"{path}: malformed vocabulary (expected unique words starting "
                             f"with {PAD!r}, {UNK!r})")
        return cls(words[2:])


# --- the Stanford Sentiment Treebank -----------------------------------------------------------


def to_binary(trees: Iterable[Tree]) -> list:
    """The binary-sentiment view of fine-grained trees: trees whose root is neutral (2) are
    dropped; on every node 0-1 become 0 (negative), 3-4 become 1 (positive) and 2 becomes
    :data:`NO_LABEL` (-1, a node without a label that the loss skips)."""
    table = np.array([0, 0, NO_LABEL, 1, 1], dtype=np.int64)
    out = []
    for t in trees:
        if t.label[-1] == 2:
            continue
        out.append(t._replace(label=table[t.label]))
    return out


@dataclasses.dataclass
class SST:
    """A loaded treebank: the vocabulary (built from the training split), the three splits as
    lists of :class:`Tree`, and the number of classes (5 fine-grained, 2 binary)."""

    vocab: Vocab
    train: list
    dev: list
    test: list
    num_classes: int


def _missing_data_message(what: str) -> str:
    return (f"{what}. The Stanford Sentiment Treebank is needed (train.txt, dev.txt, test.txt "
            f"from {OFFICIAL_URL}); fetch it with "
            f"`python -c \"from examples.treelstm import data; data.download('DIR')\"` "
            f"(or examples.treelstm.data.download(dest_dir)) and pass that directory or set "
            f"{DATA_DIR_ENV}.")


def load_sst(directory, binary: bool = False, min_count: int = 1,
             vocab: Vocab | None = None) -> SST:
    """Load ``train.txt``, ``dev.txt`` and ``test.txt`` from ``directory``.

    The vocabulary is built from all training trees (before any binary filtering, so both
    views share word ids) keeping words seen at least ``min_count`` times; the other words map
    to :data:`UNK_ID`. A given ``vocab`` (a resumed run's) is used instead. ``binary=False`` keeps the labels 0-4 (``num_classes == 5``);
    ``binary=True`` applies :func:`to_binary` to every split (``num_classes == 2``). A missing
    directory or file raises ``FileNotFoundError`` that says how to get the data.
    """
    if directory is None:
        raise FileNotFoundError(_missing_data_message("No treebank directory given (and "
                                                      "default_data_dir() found none)"))
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(_missing_data_message(f"Treebank directory {directory} does "
                                                      f"not exist"))
    paths = {s: directory / f"{s}.txt" for s in SPLITS}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(_missing_data_message(f"{directory} lacks {', '.join(missing)}"))
    raw = {s: _read_raw(p) for s, p in paths.items()}
    if vocab is None:
        vocab = Vocab.build((r.words for r in raw["train"]), min_count=min_count)
    splits = {s: [r.encode(vocab) for r in rs] for s, rs in raw.items()}
    if binary:
        splits = {s: to_binary(ts) for s, ts in splits.items()}
    return SST(vocab, splits["train"], splits["dev"], splits["test"], 2 if binary else NUM_LABELS)


def default_data_dir() -> Path | None:
    """Where the treebank is expected: ``$SPMDBATCH_SST_DIR`` if set (not checked), else
    ``shared/data/sst`` next to the repository root if that exists, else ``None``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst"
    return candidate if candidate.is_dir() else None


#: The most :func:`unpack_archive` writes per file by default (the official files are 0.3-2.2 MB).
MAX_SPLIT_BYTES = 64 * 2**20


def unpack_archive(zip_path, dest_dir, check_md5: bool = True, expected_md5=None,
                   max_bytes: int = MAX_SPLIT_BYTES) -> Path:
    """Extract ``trees/train.txt``, ``trees/dev.txt`` and ``trees/test.txt`` from the zip at
    ``zip_path`` into ``dest_dir`` (created if needed) as ``train.txt`` etc.; returns
    ``dest_dir``.

    With ``check_md5`` the md5 sums of the three files must equal ``expected_md5`` (a dict
    file name -> hex digest, :data:`SST_MD5` by default). A file that is not a zip, lacks one
    of the members, or declares a member larger than ``max_bytes`` (checked from the zip's
    directory before anything is decompressed) raises ``ValueError``. In every failing case
    nothing is written: each member is streamed in chunks through md5 into a temporary file
    in ``dest_dir``, and the three files are moved into place only when all passed.
    """
    zip_path = Path(zip_path)
    if not zipfile.is_zipfile(zip_path):
        raise ValueError(f"{zip_path} is not a zip archive (expected trainDevTestTrees_PTB.zip "
                         f"from {OFFICIAL_URL})")
    expected = SST_MD5 if expected_md5 is None else expected_md5
    with zipfile.ZipFile(zip_path) as zf:
        infos = {}
        for split in SPLITS:
            member = f"trees/{split}.txt"
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise ValueError(f"{zip_path} has no {member} (expected the PTB-format "
                                 f"archive trainDevTestTrees_PTB.zip from {OFFICIAL_URL})") from None
            if info.file_size > max_bytes:
                raise ValueError(f"{zip_path}: {member} would unpack to {info.file_size} bytes, "
                                 f"more than the {max_bytes} allowed (not the SST archive)")
            infos[f"{split}.txt"] = info
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        parts = {}
        try:
            for name, info in infos.items():
                digest = hashlib.md5()
                fd, parts[name] = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    written = 0
                    while chunk := src.read(1 << 20):   # (zipfile stops at the declared size)
                        written += len(chunk)
                        if written > max_bytes:
                            raise ValueError(f"{zip_path}: {info.filename} unpacks to more than "
                                             f"{max_bytes} bytes")
                        digest.update(chunk)
                        out.write(chunk)
                got = digest.hexdigest()
                if check_md5 and got != expected[name]:
                    raise ValueError(f"md5 mismatch for {name} in {zip_path}: expected "
                                     f"{expected[name]}, got {got} (corrupt or different download)")
            for name, tmp in parts.items():
                os.replace(tmp, dest / name)
        finally:
            for tmp in parts.values():
                try:
                    os.remove(tmp)
                except FileNotFoundError:
                    pass
    return dest


def download(dest_dir, url: str = OFFICIAL_URL, check_md5: bool = True,
             timeout: float = 60.0) -> Path:
    """Download the official PTB-format archive from ``url`` and unpack the three split files
    into ``dest_dir`` with :func:`unpack_archive` (md5 sums checked); returns ``dest_dir``."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".sst-", suffix=".zip", dir=dest)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        return unpack_archive(tmp_name, dest, check_md5=check_md5)
    finally:
        try:
            os.remove(tmp_name)
        except FileNotFoundError:
            pass


# --- a synthetic treebank ----------------------------------------------------------------------


def _score_to_label(score: int, num_classes: int) -> int:
    if num_classes == 5:
        return score + 2
    return NO_LABEL if score == 0 else int(score > 0)


def synthetic_treebank(n_trees: int, vocab_size: int = 1000, seed: int = 0,
                       num_classes: int = 5, min_leaves: int = 1, max_leaves: int = 50,
                       mean_leaves: float = 19.0, num_negators: int = 3,
                       polar_fraction: float = 0.25):
    """Random binary trees with SST-like sizes and labels given by a learnable rule.

    Returns ``(vocab, trees)``: a :class:`Vocab` with the words ``w0 .. w{vocab_size-1}``
    (ids 2 .. vocab_size+1) and ``n_trees`` :class:`Tree` in post-order. Deterministic in
    ``seed``.

    Sizes: the number of leaves is gamma-distributed with mean about ``mean_leaves`` (19, like
    SST sentences) restricted to ``[min_leaves, max_leaves]``; each phrase is split with a
    right-branching bias, so depths resemble parse trees. Words are drawn with Zipf-like
    frequencies (word ``wk`` has weight ``1/(k+1)``).

    The rule: every word has a hidden score; a fraction ``polar_fraction`` of words gets a
    score in {-2, -1, 1, 2}, the rest 0. ``num_negators`` frequent words (``w1``, ``w3``,
    ``w5``, ...) are *negators* with score 0. The score of an internal node with children scores ``a`` (left) and ``b``
    (right) is:

    - ``-b`` if the left child is a negator word, ``-a`` if the right child is a negator word
      (a negator flips the sign of its sibling phrase; two negators give 0);
    - else ``clip(a + b, -2, 2)``.

    Labels: with ``num_classes=5`` a node's label is ``score + 2`` (0-4). With
    ``num_classes=2`` it is 1 for a positive score, 0 for a negative one and :data:`NO_LABEL`
    (-1) for 0, and trees are redrawn until their root is non-neutral (like the binary SST
    view).
    """
    if num_classes not in (2, 5):
        raise ValueError(f"num_classes must be 2 or 5, got {num_classes}")
    if not 1 <= min_leaves <= max_leaves:
        raise ValueError(f"need 1 <= min_leaves <= max_leaves, got {min_leaves}, {max_leaves}")
    if vocab_size < 2 or not 0 <= num_negators < vocab_size:
        raise ValueError("need vocab_size >= 2 and 0 <= num_negators < vocab_size")
    rng = np.random.default_rng(seed)
    vocab = Vocab(f"w{k}" for k in range(vocab_size))
    # Hidden word scores and negators (frequent, odd-ranked words so they are seen often).
    polar = rng.random(vocab_size) < polar_fraction
    signs = rng.choice(np.array([-2, -1, 1, 2]), size=vocab_size)
    word_score = np.where(polar, signs, 0).astype(np.int64)
    negator = np.zeros(vocab_size, dtype=bool)
    negator[1:2 * num_negators:2] = True
    word_score[negator] = 0
    freq = 1.0 / np.arange(1, vocab_size + 1)
    freq /= freq.sum()
    shape = 4.0
    trees = []
    while len(trees) < n_trees:
        n_leaves = 0
        while not min_leaves <= n_leaves <= max_leaves:
            n_leaves = int(round(rng.gamma(shape, mean_leaves / shape)))
        words = rng.choice(vocab_size, size=n_leaves, p=freq)
        tree = _random_tree(rng, words, word_score, negator, num_classes)
        if num_classes == 2 and tree.label[-1] == NO_LABEL:
            continue
        trees.append(tree)
    return vocab, trees


def _random_tree(rng, words, word_score, negator, num_classes) -> Tree:
    """One random tree over ``words`` (indices into the synthetic vocabulary), built
    iteratively in depth-first post-order, labelled by the rule of :func:`synthetic_treebank`."""
    n_leaves = len(words)
    n = 2 * n_leaves - 1
    word = np.full(n, PAD_ID, dtype=np.int64)
    left = np.full(n, -1, dtype=np.int64)
    right = np.full(n, -1, dtype=np.int64)
    score = np.zeros(n, dtype=np.int64)
    is_neg = np.zeros(n, dtype=bool)
    out = 0
    done = []                      # node indices of finished subtrees
    todo = [(0, n_leaves, False)]  # spans [lo, hi); True once its children are finished
    while todo:
        lo, hi, ready = todo.pop()
        if hi - lo == 1:
            w = int(words[lo])
            word[out] = w + 2      # ids 0 and 1 are <pad> and <unk>
            score[out] = word_score[w]
            is_neg[out] = negator[w]
        elif not ready:
            # Right-branching bias: the left part is usually short.
            size = hi - lo
            k = 1 + min(int(rng.geometric(0.5)) - 1, size - 2) if rng.random() < 0.85 \
                else int(rng.integers(1, size))
            todo.append((lo, hi, True))
            todo.append((lo + k, hi, False))
            todo.append((lo, lo + k, False))
            continue
        else:
            r = done.pop()
            l = done.pop()
            left[out], right[out] = l, r
            if is_neg[l]:
                score[out] = -score[r]
            elif is_neg[r]:
                score[out] = -score[l]
            else:
                score[out] = min(2, max(-2, score[l] + score[r]))
        done.append(out)
        out += 1
    label = np.array([_score_to_label(int(s), num_classes) for s in score], dtype=np.int64)
    return Tree(word, left, right, label)


# --- batching and statistics -------------------------------------------------------------------


def batches(trees: Sequence[Tree], batch_size: int, shuffle: bool = False, rng=None,
            drop_last: bool = False) -> Iterator[list]:
    """Yield lists of at most ``batch_size`` trees covering ``trees`` once; the last batch may
    be smaller unless ``drop_last``. With ``shuffle`` the order is a permutation drawn from
    ``rng`` (a ``numpy.random.Generator``, a seed, or ``None`` for a fresh generator)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.arange(len(trees))
    if shuffle:
        order = np.random.default_rng(rng).permutation(len(trees))
    stop = len(trees) - len(trees) % batch_size if drop_last else len(trees)
    for start in range(0, stop, batch_size):
        yield [trees[i] for i in order[start:start + batch_size]]


def sst_size_stats(trees: Sequence[Tree]) -> dict:
    """Size statistics of a list of trees as a JSON-friendly dict: ``trees`` (count),
    ``nodes``/``leaves``/``depth`` each with ``_mean`` and ``_max`` (for example
    ``depth_max``), and ``nodes_total``."""
    if not trees:
        return {"trees": 0, "nodes_total": 0, "nodes_mean": 0.0, "nodes_max": 0,
                "leaves_mean": 0.0, "leaves_max": 0, "depth_mean": 0.0, "depth_max": 0}
    nodes = np.array([num_nodes(t) for t in trees])
    leaves = np.array([num_leaves(t) for t in trees])
    depths = np.array([depth(t) for t in trees])
    return {"trees": len(trees), "nodes_total": int(nodes.sum()),
            "nodes_mean": float(nodes.mean()), "nodes_max": int(nodes.max()),
            "leaves_mean": float(leaves.mean()), "leaves_max": int(leaves.max()),
            "depth_mean": float(depths.mean()), "depth_max": int(depths.max())}
