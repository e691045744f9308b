"""The classifier's vocabulary (token -> index) held in a few numpy arrays.

A dict of 120,000 strings is some 23 MB of Python objects, and a look-up
writes to the reference counts of what it touches: in a worker forked from
the fork server (gateway.forkshare) every page it reads from is copied in
time. Here each token is a 128-bit xxh3 hash of its UTF-8 bytes
(``surrogatepass``: a message's undecodable bytes are surrogates), and a
message's tokens are found with one ``np.searchsorted`` over the sorted
first halves, the second halves checked at the places found. The hash is
the same in every process (unlike ``hash()``, salted in each), the arrays
are never written after they are built, and the whole is some 6 MB.

Two tokens of a vocabulary that share the first 64 bits (odds of about
1 in 2.5 billion for 120,000 tokens) are refused when it is built; a
message's unknown token taken for a known one would need all 128 bits equal.
The token strings are kept as one UTF-8 block, read back only to name the
tokens of an explanation or to write the model out.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Iterator, Mapping, Sequence

import numpy as np
import xxhash

_encode = operator.methodcaller("encode", "utf-8", "surrogatepass")


def token_hashes(tokens: Collection[str]) -> np.ndarray:
    """Each token's 128-bit hash as a row of two uint64 (first half, second
    half): one C call a token, the rest numpy's."""
    try:  # str.encode alone is twice as fast as with an error handler
        data = b"".join(map(xxhash.xxh3_128_digest, map(str.encode, tokens)))
    except UnicodeEncodeError:  # a surrogate: the same bytes as the handler gives the rest
        data = b"".join(map(xxhash.xxh3_128_digest, map(_encode, tokens)))
    return np.frombuffer(data, dtype=">u8").reshape(-1, 2).astype(np.uint64)


class Vocabulary(Mapping[str, int]):
    """Tokens and their weight indices (0 .. n-1), looked up by hash."""

    __slots__ = ("_checks", "_ends", "_indices", "_keys", "_text", "rank")

    def __init__(self, tokens: Sequence[str]):
        """``tokens``: each index's token, in index order, each once."""
        count = len(tokens)
        hashes = token_hashes(tokens)
        order = np.argsort(hashes[:, 0], kind="stable")
        self._keys = hashes[order, 0]
        self._checks = hashes[order, 1]
        if count > 1 and bool((self._keys[1:] == self._keys[:-1]).any()):
            twice = self._keys[1:] == self._keys[:-1]
            same = bool((self._checks[1:][twice] == self._checks[:-1][twice]).any())
            raise ValueError("a token appears twice" if same else
                             "two tokens share a hash (retrain, or add a token)")
        self._indices = order.astype(np.int32)
        encoded = [_encode(token) for token in tokens]
        self._text = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._ends = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=count),
                  out=self._ends[1:])
        # Each index's place among the tokens sorted as strings (explain's
        # order for ties); sorting 120,000 tokens is some 75 ms of a load.
        rank = np.empty(count, dtype=np.int32)
        rank[sorted(range(count), key=tokens.__getitem__)] = np.arange(count, dtype=np.int32)
        self.rank = rank

    @classmethod
    def of(cls, mapping: Mapping[str, int]) -> Vocabulary:
        """A vocabulary from a token -> index mapping (a trainer's dict)."""
        if isinstance(mapping, Vocabulary):
            return mapping
        tokens = sorted(mapping, key=mapping.__getitem__)
        if [mapping[t] for t in tokens] != list(range(len(tokens))):
            raise ValueError("the indices are not 0 .. n-1, each once")
        return cls(tokens)

    def indices(self, tokens: Collection[str]) -> np.ndarray:
        """Each token's index (intp), -1 for one the vocabulary does not hold."""
        if not len(tokens) or not len(self._keys):
            return np.full(len(tokens), -1, dtype=np.intp)
        hashes = token_hashes(tokens)
        at = np.searchsorted(self._keys, hashes[:, 0])
        np.minimum(at, len(self._keys) - 1, out=at)
        found = (self._keys[at] == hashes[:, 0]) & (self._checks[at] == hashes[:, 1])
        return np.where(found, self._indices[at], -1).astype(np.intp)

    def token(self, index: int) -> str:
        """The token at a weight index (read back from the UTF-8 block)."""
        start, end = self._ends[index], self._ends[index + 1]
        return self._text[start:end].tobytes().decode("utf-8", "surrogatepass")

    def __getitem__(self, token: str) -> int:
        if not isinstance(token, str):
            raise KeyError(token)
        index = int(self.indices([token])[0])
        if index < 0:
            raise KeyError(token)
        return index

    def __iter__(self) -> Iterator[str]:
        """The tokens in index order."""
        return map(self.token, range(len(self)))

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<Vocabulary of {len(self)} tokens>"

    def nbytes(self) -> int:
        """The bytes its arrays hold."""
        return sum(a.nbytes for a in (self._keys, self._checks, self._indices, self._text,
                                      self._ends, self.rank))
