"""The Tree-LSTM data layer: parsing, vocabulary, the SST loader, the archive, synthetic trees."""
import hashlib
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the example is a package under the repository root
    sys.path.insert(0, str(ROOT))

from examples.treelstm import data  # noqa: E402

SMALL = [
    "(3 (2 (2 The) (2 Rock)) (4 (3 good) (2 .)))",
    "(1 (2 and\\/or) (1 (0 bad) (2 8\u00a01\\/2)))",
    "(2 word)",
]
DEV = ["(4 (4 good) (2 Rock))", "(2 (2 unseen) (2 .))"]
TEST = ["(0 (0 bad) (2 The))"]


def _check_invariants(tree):
    data.validate_tree(tree)
    n = data.num_nodes(tree)
    assert tree.num_nodes == n and tree.root == n - 1
    for name in data.Tree._fields:
        arr = getattr(tree, name)
        assert arr.dtype == np.int64 and arr.shape == (n,)
    leaf = tree.left < 0
    assert np.all(tree.right[leaf] == -1) and np.all(tree.word[~leaf] == data.PAD_ID)
    idx = np.arange(n)
    assert np.all(tree.left[~leaf] < idx[~leaf]) and np.all(tree.right[~leaf] < idx[~leaf])
    assert data.num_leaves(tree) == (n + 1) // 2


# --- parsing -------------------------------------------------------------------------------------


def test_parse_small_tree_post_order():
    vocab = data.Vocab(["The", "Rock", "good", "."])
    t = data.parse_tree(SMALL[0], vocab)
    _check_invariants(t)
    # post-order: The, Rock, (The Rock), good, ., (good .), root
    assert t.left.tolist() == [-1, -1, 0, -1, -1, 3, 2]
    assert t.right.tolist() == [-1, -1, 1, -1, -1, 4, 5]
    assert t.label.tolist() == [2, 2, 2, 3, 2, 4, 3]
    assert [vocab.word(w) for w in t.word[t.left < 0]] == ["The", "Rock", "good", "."]
    assert data.heights(t).tolist() == [0, 0, 1, 0, 0, 1, 2]
    assert data.depth(t) == 3


def test_single_word_tree():
    t = data.parse_tree("(2 word)", data.Vocab(["word"]))
    _check_invariants(t)
    assert t.left.tolist() == [-1] and t.label.tolist() == [2]
    assert data.depth(t) == 1 and data.heights(t).tolist() == [0]


def test_unescape_and_no_break_space_token():
    raw = data._parse_raw(SMALL[1])
    assert raw.words == ["and/or", "bad", "8\u00a01/2"]       # one token, slash unescaped
    assert data._parse_raw("(2 \\*\\*)").words == ["**"]
    vocab = data.Vocab(["and/or", "bad", "8\u00a01/2"])
    t = data.parse_tree(SMALL[1], vocab)
    _check_invariants(t)
    assert t.word[t.left < 0].tolist() == [2, 3, 4]


def test_extra_spaces_are_separators_only():
    t = data.parse_tree("  (2  (1 a)   (3 b) ) \n", data.Vocab(["a", "b"]))
    assert t.label.tolist() == [1, 3, 2]


def test_deep_tree_is_parsed_iteratively():
    depth = 2000
    line = "(1 (2 w) " * (depth - 1) + "(3 w)" + ")" * (depth - 1)
    t = data.parse_tree(line, data.Vocab(["w"]))
    _check_invariants(t)
    assert data.num_nodes(t) == 2 * depth - 1
    assert data.depth(t) == depth
    assert data.heights(t)[-1] == depth - 1


MALFORMED = {
    "unbalanced_close": "(2 (2 a) (2 b)))",
    "unbalanced_open": "(2 (2 a) (2 b)",
    "missing_label": "(2 ((2 a) (2 b)) (2 c))",
    "missing_label_word": "(2 (a) (2 b))",
    "non_integer_label": "(x (2 a) (2 b))",
    "negative_label": "(-1 (2 a) (2 b))",
    "out_of_range_label": "(5 (2 a) (2 b))",
    "three_children": "(2 (2 a) (2 b) (2 c))",
    "one_phrase_child": "(2 (2 (2 a) (2 b)))",
    "two_words": "(2 a b)",
    "word_and_phrase": "(2 a (2 b))",
    "phrase_and_word": "(2 (2 b) a)",
    "empty_node": "(2 (2) (2 b))",
    "trailing_garbage": "(2 (2 a) (2 b)) junk",
    "second_tree": "(2 a) (2 b)",
    "bare_word": "word",
    "empty_parens": "()",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_tree_raises_with_location(name):
    with pytest.raises(ValueError, match=r"^train\.txt:123: malformed tree"):
        data.parse_tree(MALFORMED[name], data.Vocab(), filename="train.txt", lineno=123)


def test_read_trees_reports_file_and_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(SMALL[0] + "\n" + SMALL[2] + "\n" + "(2 (2 a) (2 b) (2 c))\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.txt:3: .*more than two children"):
        data.read_trees(path)


def test_read_trees_builds_vocab_and_keeps_tokens(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(SMALL) + "\n\n", encoding="utf-8")  # blank line skipped
    result = data.read_trees(path)
    trees, tokens, vocab = result
    assert len(trees) == 3
    assert tokens[0] == ["The", "Rock", "good", "."] and tokens[2] == ["word"]
    assert vocab == data.Vocab.build(tokens)
    for t, words in zip(trees, tokens):
        _check_invariants(t)
        assert t.word[t.left < 0].tolist() == [vocab.lookup(w) for w in words]


# --- vocabulary ----------------------------------------------------------------------------------


def test_vocab_unknown_words_min_count_and_json(tmp_path):
    vocab = data.Vocab.build([["a", "b", "a"], ["c", "a", "b"]], min_count=2)
    assert len(vocab) == 4                          # <pad>, <unk>, a, b
    assert vocab.word(data.PAD_ID) == data.PAD and vocab.word(data.UNK_ID) == data.UNK
    assert vocab.lookup("a") == 2 and vocab.lookup("b") == 3   # most frequent first
    assert vocab.lookup("c") == data.UNK_ID == vocab.unk_id
    assert vocab.lookup("never seen") == data.UNK_ID
    assert "a" in vocab and "c" not in vocab
    assert vocab.encode(["b", "zzz"]).tolist() == [3, data.UNK_ID]
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert data.Vocab.load(path) == vocab
    path.write_text(json.dumps({"words": ["a"]}), encoding="utf-8")
    with pytest.raises(ValueError):
        data.Vocab.load(path)


def test_unknown_words_in_parse():
    t = data.parse_tree("(2 (2 known) (2 unknown))", data.Vocab(["known"]))
    assert t.word.tolist() == [2, data.UNK_ID, data.PAD_ID]


# --- SST loader on a small hand-made treebank ----------------------------------------------------


def _write_zip(path, files, folder="trees"):
    with zipfile.ZipFile(path, "w") as zf:
        for name, lines in files.items():
            zf.writestr(f"{folder}/{name}", "\n".join(lines) + "\n")
    return path


SMALL_FILES = {"train.txt": SMALL, "dev.txt": DEV, "test.txt": TEST}


def test_unpack_archive_then_load_sst(tmp_path):
    archive = _write_zip(tmp_path / "trainDevTestTrees_PTB.zip", SMALL_FILES)
    dest = data.unpack_archive(archive, tmp_path / "sst", check_md5=False)
    assert sorted(p.name for p in dest.iterdir()) == ["dev.txt", "test.txt", "train.txt"]
    sst = data.load_sst(dest)
    assert (len(sst.train), len(sst.dev), len(sst.test), sst.num_classes) == (3, 2, 1, 5)
    assert sst.vocab.lookup("and/or") != data.UNK_ID
    assert sst.dev[1].word[0] == data.UNK_ID              # "unseen" is not in train
    for t in sst.train + sst.dev + sst.test:
        _check_invariants(t)
    assert sst.train[0].label.tolist() == [2, 2, 2, 3, 2, 4, 3]


def test_unpack_archive_with_expected_sums(tmp_path):
    archive = _write_zip(tmp_path / "a.zip", SMALL_FILES)
    sums = {name: hashlib.md5(("\n".join(lines) + "\n").encode()).hexdigest()
            for name, lines in SMALL_FILES.items()}
    data.unpack_archive(archive, tmp_path / "ok", expected_md5=sums)
    assert (tmp_path / "ok" / "train.txt").read_text(encoding="utf-8").startswith("(3 ")


def test_md5_mismatch_raises_and_writes_nothing(tmp_path):
    archive = _write_zip(tmp_path / "a.zip", SMALL_FILES)
    with pytest.raises(ValueError, match="md5 mismatch"):
        data.unpack_archive(archive, tmp_path / "bad")       # the official sums
    assert not (tmp_path / "bad" / "train.txt").exists()


def test_unpack_rejects_wrong_archives(tmp_path):
    no_folder = _write_zip(tmp_path / "flat.zip", SMALL_FILES, folder="other")
    with pytest.raises(ValueError, match="trees/"):
        data.unpack_archive(no_folder, tmp_path / "x", check_md5=False)
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a zip"):
        data.unpack_archive(not_zip, tmp_path / "x", check_md5=False)


def test_official_constants():
    assert data.OFFICIAL_URL == "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
    assert set(data.SST_MD5) == {"train.txt", "dev.txt", "test.txt"}


def test_missing_directory_or_file_mentions_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download"):
        data.load_sst(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="download"):
        data.load_sst(None)
    (tmp_path / "train.txt").write_text(SMALL[0] + "\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"dev\.txt.*download"):
        data.load_sst(tmp_path)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPMDBATCH_SST_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("SPMDBATCH_SST_DIR")
    expected = ROOT.parent / "shared" / "data" / "sst"
    assert data.default_data_dir() == (expected if expected.is_dir() else None)


def test_binary_view(tmp_path):
    files = {
        "train.txt": ["(2 (1 a) (3 b))",              # neutral root: dropped
                      "(1 (0 a) (2 (2 b) (4 c)))",
                      "(4 (3 a) (2 b))"],
        "dev.txt": ["(2 a)"], "test.txt": ["(0 a)"],
    }
    d = tmp_path / "sst"
    d.mkdir()
    for name, lines in files.items():
        (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    fine = data.load_sst(d)
    binary = data.load_sst(d, binary=True)
    assert binary.num_classes == 2 and binary.vocab == fine.vocab
    assert (len(binary.train), len(binary.dev), len(binary.test)) == (2, 0, 1)
    assert binary.train[0].label.tolist() == [0, -1, 1, -1, 0]
    assert binary.train[1].label.tolist() == [1, -1, 1]
    assert binary.test[0].label.tolist() == [0]
    assert fine.train[1].label.tolist() == [0, 2, 4, 2, 1]    # the fine view is untouched
    assert np.array_equal(binary.train[0].word, fine.train[1].word)


# --- synthetic treebank, batches, statistics -----------------------------------------------------


def test_synthetic_treebank_invariants_and_determinism():
    vocab, trees = data.synthetic_treebank(300, vocab_size=200, seed=3)
    assert len(trees) == 300 and len(vocab) == 202
    leaves = [data.num_leaves(t) for t in trees]
    assert 1 <= min(leaves) and max(leaves) <= 50
    assert 14 <= np.mean(leaves) <= 24
    for t in trees:
        _check_invariants(t)
        assert t.label.min() >= 0 and t.label.max() <= 4
        assert t.word[t.left < 0].min() >= 2 and t.word.max() < len(vocab)
    assert len(set(np.concatenate([t.label for t in trees]).tolist())) == 5
    _, again = data.synthetic_treebank(300, vocab_size=200, seed=3)
    _, other = data.synthetic_treebank(300, vocab_size=200, seed=4)
    same = all(all(np.array_equal(a, b) for a, b in zip(s, t)) for s, t in zip(trees, again))
    assert same
    assert not all(len(s.label) == len(t.label) and np.array_equal(s.label, t.label)
                   for s, t in zip(trees, other))


def test_synthetic_labels_follow_the_rule():
    vocab, trees = data.synthetic_treebank(200, seed=5, min_leaves=2, max_leaves=12)
    word_score = {}
    for t in trees:                                  # leaf labels reveal the word scores
        for w, lab in zip(t.word[t.left < 0], t.label[t.left < 0]):
            assert word_score.setdefault(int(w), int(lab) - 2) == int(lab) - 2
    negators = {2 + k for k in (1, 3, 5)}            # w1, w3, w5 by default
    checked_negation = 0
    for t in trees:
        s = t.label - 2
        for k in np.flatnonzero(t.left >= 0):
            l, r = t.left[k], t.right[k]
            if t.left[l] < 0 and t.word[l] in negators:
                assert s[k] == -s[r]
                checked_negation += 1
            elif t.left[r] < 0 and t.word[r] in negators:
                assert s[k] == -s[l]
                checked_negation += 1
            else:
                assert s[k] == np.clip(s[l] + s[r], -2, 2)
    assert checked_negation > 0


def test_synthetic_binary():
    _, trees = data.synthetic_treebank(100, seed=0, num_classes=2)
    assert len(trees) == 100
    assert all(t.label[-1] in (0, 1) for t in trees)
    labels = np.concatenate([t.label for t in trees])
    assert set(labels.tolist()) == {-1, 0, 1}


def test_batches_cover_everything():
    _, trees = data.synthetic_treebank(23, seed=0)
    plain = list(data.batches(trees, 5))
    assert [len(b) for b in plain] == [5, 5, 5, 5, 3]
    assert [id(t) for b in plain for t in b] == [id(t) for t in trees]
    shuffled = list(data.batches(trees, 5, shuffle=True, rng=np.random.default_rng(1)))
    ids = sorted(id(t) for b in shuffled for t in b)
    assert ids == sorted(id(t) for t in trees)
    again = list(data.batches(trees, 5, shuffle=True, rng=1))
    assert [[id(t) for t in b] for b in again] == [[id(t) for t in b] for b in shuffled]
    assert [len(b) for b in data.batches(trees, 5, drop_last=True)] == [5, 5, 5, 5]


def test_size_stats():
    vocab = data.Vocab(["a", "b", "c"])
    trees = [data.parse_tree(SMALL[0], vocab), data.parse_tree("(2 a)", vocab)]
    stats = data.sst_size_stats(trees)
    assert stats == {"trees": 2, "nodes_total": 8, "nodes_mean": 4.0, "nodes_max": 7,
                     "leaves_mean": 2.5, "leaves_max": 4, "depth_mean": 2.0, "depth_max": 3}
    json.dumps(stats)


# --- the real treebank (when present) ------------------------------------------------------------

SST_DIR = data.default_data_dir()
needs_sst = pytest.mark.skipif(
    SST_DIR is None or not (Path(SST_DIR) / "train.txt").is_file(),
    reason="Stanford Sentiment Treebank not found (set SPMDBATCH_SST_DIR or see data.download)")


@pytest.fixture(scope="module")
def sst():
    start = time.perf_counter()
    loaded = data.load_sst(SST_DIR)
    print(f"load_sst: {time.perf_counter() - start:.2f} s")
    return loaded


def _check_split(trees):
    """The Tree invariants for a whole split at once (vectorised over all nodes)."""
    sizes = np.array([len(t.label) for t in trees])
    ends = np.cumsum(sizes)
    starts = ends - sizes
    owner = np.repeat(np.arange(len(trees)), sizes)          # tree of every node
    left = np.concatenate([t.left for t in trees])
    right = np.concatenate([t.right for t in trees])
    label = np.concatenate([t.label for t in trees])
    word = np.concatenate([t.word for t in trees])
    gid = np.arange(len(label))
    leaf = left < 0
    assert np.array_equal(leaf, right < 0) and np.all(left[leaf] == -1)
    assert np.all(word[leaf] >= data.PAD_ID) and np.all(word[~leaf] == data.PAD_ID)
    assert label.min() >= 0 and label.max() <= 4
    gl = left[~leaf] + starts[owner[~leaf]]
    gr = right[~leaf] + starts[owner[~leaf]]
    assert np.all(gl < gid[~leaf]) and np.all(gr < gid[~leaf])      # children first
    assert np.all(gl >= starts[owner[~leaf]]) and np.all(gr >= starts[owner[~leaf]])
    parents = np.bincount(np.concatenate([gl, gr]), minlength=len(label))
    is_root = np.zeros(len(label), dtype=bool)
    is_root[ends - 1] = True
    assert np.all(parents[is_root] == 0) and np.all(parents[~is_root] == 1)  # root is last
    assert np.all(sizes == 2 * np.bincount(owner[leaf], minlength=len(trees)) - 1)


@needs_sst
def test_real_sst_counts_and_invariants(sst):
    assert (len(sst.train), len(sst.dev), len(sst.test)) == (8544, 1101, 2210)
    assert sst.num_classes == 5
    for split in (sst.train, sst.dev, sst.test):
        _check_split(split)
    stats = data.sst_size_stats(sst.train)
    assert 18 <= stats["leaves_mean"] <= 20 and stats["leaves_max"] <= 60
    assert 5 <= stats["depth_mean"] and stats["depth_max"] < 100
    print("train stats:", stats)


@needs_sst
def test_real_sst_binary_counts(sst):
    binary = {s: data.to_binary(getattr(sst, s)) for s in data.SPLITS}
    assert [len(binary[s]) for s in data.SPLITS] == [6920, 872, 1821]
    assert all(t.label[-1] in (0, 1) for s in data.SPLITS for t in binary[s])


@needs_sst
def test_real_sst_md5_matches():
    for name, digest in data.SST_MD5.items():
        assert hashlib.md5((Path(SST_DIR) / name).read_bytes()).hexdigest() == digest


def test_validate_tree_rejects_broken_trees():
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    good = data.Tree(i64(2, 3, 0), i64(-1, -1, 0), i64(-1, -1, 1), i64(2, 2, 2))
    data.validate_tree(good)
    root_first = data.Tree(i64(0, 2, 3), i64(1, -1, -1), i64(2, -1, -1), i64(2, 2, 2))
    shared_child = data.Tree(i64(2, 3, 0), i64(-1, -1, 0), i64(-1, -1, 0), i64(2, 2, 2))
    half_leaf = data.Tree(i64(2, 3, 0), i64(-1, -1, 0), i64(-1, 0, 1), i64(2, 2, 2))
    for bad in (root_first, shared_child, half_leaf, good._replace(label=np.zeros(3))):
        with pytest.raises(ValueError):
            data.validate_tree(bad)


def test_download_from_a_local_url(tmp_path):
    # urllib also reads file:// URLs, so download() is exercised without a network.
    archive = _write_zip(tmp_path / "trainDevTestTrees_PTB.zip", SMALL_FILES)
    dest = data.download(tmp_path / "dl", url=archive.as_uri(), check_md5=False)
    assert sorted(p.name for p in dest.iterdir()) == ["dev.txt", "test.txt", "train.txt"]
    with pytest.raises(ValueError, match="md5 mismatch"):
        data.download(tmp_path / "dl2", url=archive.as_uri())
    assert sorted(p.name for p in (tmp_path / "dl2").iterdir()) == []    # temp zip removed


# --- encodings and whitespace (issue 19) -------------------------------------------------------

def test_a_utf8_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"\xef\xbb\xbf" + (SMALL[0] + "\n" + SMALL[2] + "\n").encode("utf-8"))
    result = data.read_trees(path)
    assert result.tokens == [["The", "Rock", "good", "."], ["word"]]


def test_lines_of_tabs_are_blank_and_tabs_separate_tokens(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(SMALL[2] + "\n\t\n \t \r\n" + "(2\t(2 a)\t(2 b))\t\n", encoding="utf-8")
    result = data.read_trees(path)
    assert result.tokens == [["word"], ["a", "b"]]


def test_latin1_bytes_are_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes((SMALL[2] + "\n").encode("utf-8") + "(2 caf\u00e9)\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train\.txt:2: not UTF-8 text \(byte 0xe9"):
        data.read_trees(path)


def test_a_negative_label_is_reported_as_out_of_range():
    with pytest.raises(ValueError, match=r"label -1 is out of range 0-4"):
        data.parse_tree("(-1 (2 a) (2 b))", data.Vocab(), filename="train.txt", lineno=1)
    with pytest.raises(ValueError, match=r"label 'x1' is not an integer"):
        data.parse_tree("(x1 (2 a) (2 b))", data.Vocab(), filename="train.txt", lineno=1)
